"""The PACS service: a DICOM Storage SCP, a durable inbox, scoring workers, and an SR sender.

Flow of one radiograph: C-STORE arrives -> validated (bad input: quarantine, audit row, refusal
status) -> written durably to the inbox -> acknowledged 0x0000 -> a worker scores it, writes
the SR into the durable outbox and a JSON line, commits the audit row -> the sender C-STOREs
the SR to the PACS with retries. Killed at any point and restarted, the inbox and outbox are
recovered and every acknowledged instance is scored exactly once (the audit row is the
commit point; SR UIDs are deterministic, so a re-sent SR replaces itself).

With ``[pacs] seg_model_file`` set, CT and MR instances take the series path instead
(:mod:`agent.pacs.series`): stored per series, segmented once the series is quiet, answered
with a DICOM SEG through the same outbox and senders.

References
----------
.. [1] DICOM PS3.4 Annex B (Storage Service Class), PS3.7 9.1.1 (C-STORE).
"""

from __future__ import annotations

import io
import json
import logging
import pathlib
import threading
import time
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.config import AgentConfig
from agent.pacs.audit import AuditLog
from agent.pacs.inbox import DurableQueue, Quarantine, uid_hash
from agent.pacs.report import build_sr
from agent.pacs.scoring import STATUS_CANNOT_UNDERSTAND, LoadedModel, Scorer, check_dataset, preprocess, read_instance
from agent.pacs.seg import SEGMENTABLE_MODALITIES
from agent.pacs.series import SeriesPipeline, SeriesStore
from medfl.errors import DataError, PolicyViolation, SessionAborted, StateError

__all__ = ["PacsService"]

log = logging.getLogger(__name__)

#: libraries that log data-set contents (UIDs, patient attributes) at INFO/DEBUG; the PACS
#: service caps them at WARNING so the agent's logs never carry patient identifiers
_CHATTY_LOGGERS = ("highdicom", "pynetdicom", "pydicom")

STATUS_SUCCESS = 0x0000
#: how long a stop waits for the workers' and senders' current items before abandoning them
STOP_GRACE_S = 2.0
STATUS_OUT_OF_RESOURCES = 0xA700


#: pynetdicom's DUL thread sleeps this long between polls of an idle association socket (its
#: private ``_run_loop_delay``, 1 ms by default). In a 200-image burst the polling of the
#: per-image associations took about a sixth of the agent's CPU (py-spy); 5 ms adds at most 5 ms
#: to a reply, far below any PACS timeout. Left alone if a pynetdicom release drops the attribute.
DUL_IDLE_POLL_S = 0.005


def calm_reactor(assoc: Any) -> None:
    """Make an association's idle polling less eager (see :data:`DUL_IDLE_POLL_S`)."""
    dul = getattr(assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_IDLE_POLL_S


class PacsService:
    """Everything the agent does as a DICOM node.

    Parameters
    ----------
    cfg : AgentConfig
        Parsed agent.toml (its ``[pacs]`` table).
    """

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.pcfg = cfg.pacs
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        root = cfg.agent.state_dir / "pacs"
        self.inbox = DurableQueue(root / "inbox")
        self.outbox = DurableQueue(root / "outbox")
        self.quarantine = Quarantine(root / "quarantine", max_bytes=self.pcfg.quarantine_max_mb * 1024 * 1024)
        self.results_dir = root / "results"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.audit = AuditLog(root / "audit.sqlite")
        self.encrypted = self.pcfg.scoring == "encrypted"
        if self.encrypted:
            from agent.pacs.encrypted import EncryptedScorer

            self.scorer: Any = EncryptedScorer(cfg)
        else:
            self.scorer = Scorer(model_file=self.pcfg.model_file, models_dir=cfg.agent.state_dir / "models")
        self.series: SeriesPipeline | None = None
        if self.pcfg.seg_model_file is not None:
            self.series = SeriesPipeline(
                store=SeriesStore(root / "series", quiet_s=self.pcfg.series_quiet_s), audit=self.audit,
                quarantine=self.quarantine, outbox=self.outbox, overlap=self.pcfg.seg_overlap,
                scorer=Scorer(model_file=self.pcfg.seg_model_file, models_dir=cfg.agent.state_dir / "models"))
        self._stop = threading.Event()
        self._results_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._server: Any = None

    # ---- intake (SCP handler and watch folder) ------------------------------------------
    def accept(self, data: bytes, *, source: str) -> tuple[int, str]:
        """Validate and durably enqueue one encoded instance; the DICOM status and a comment."""
        try:
            ds, uid, sop_class = read_instance(data)
        except DataError as exc:
            key = uid_hash(f"unparsed:{time.time_ns()}")
            reason = str(exc)
            kept = self.quarantine.put(key, data, reason, STATUS_CANNOT_UNDERSTAND, source=source)
            self.audit.failed(key, "quarantined", reason if kept else f"{reason} (not kept: quarantine full)")
            log.warning("quarantined %s from %s: %s%s", key[:16], source, reason, "" if kept else " (not kept)")
            return STATUS_CANNOT_UNDERSTAND, reason
        if self.series is not None and str(ds.get("Modality", "")) in SEGMENTABLE_MODALITIES:
            return self.series.accept(ds, data, source=source)
        key = uid_hash(uid)
        rejection = check_dataset(ds)
        if rejection is not None:
            kept = self.quarantine.put(key, data, rejection.reason, rejection.status, source=source,
                                       sop_class=sop_class)
            self.audit.failed(key, "quarantined", rejection.reason if kept else
                              f"{rejection.reason} (not kept: quarantine full)", sop_class)
            log.warning("quarantined %s from %s: %s (status 0x%04X)%s", key[:16], source, rejection.reason,
                        rejection.status, "" if kept else " (not kept)")
            return rejection.status, rejection.reason
        if self.audit.is_scored(key):
            log.info("instance %s from %s was scored before; not scoring it again", key[:16], source)
            return STATUS_SUCCESS, "already scored"
        self.inbox.put(key, data)
        self.audit.received(key, sop_class)
        log.info("received %s from %s", key[:16], source)
        return STATUS_SUCCESS, ""

    def _handle_store(self, event: Any) -> Any:
        try:
            data = event.encoded_dataset()
        except Exception as exc:
            log.warning("could not read the C-STORE data set: %s", type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        try:
            status, comment = self.accept(data, source=f"C-STORE from {event.assoc.requestor.ae_title}")
        except OSError as exc:
            log.error("cannot store the instance durably: %s", exc)
            status, comment = STATUS_OUT_OF_RESOURCES, "the agent cannot write to its inbox"
        if status == STATUS_SUCCESS:
            return status
        reply = Dataset()
        reply.Status = status
        reply.ErrorComment = comment[:64]
        return reply

    # ---- workers -----------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            paths = self.inbox.claim_many(self.pcfg.max_batch)
            if not paths:
                self._stop.wait(0.05)
                continue
            try:
                self._process_batch(paths)
            except Exception:
                log.exception("unexpected failure on a batch of %d; it stays in the inbox", len(paths))
                for path in paths:
                    if path.exists():
                        self.inbox.release(path)
                self._stop.wait(1.0)

    def _process_batch(self, paths: list[pathlib.Path]) -> None:
        """Score a burst's worth of claimed instances with one forward pass, then finish each."""
        try:
            loaded = self.scorer.current()
        except (FileNotFoundError, StateError, PolicyViolation) as exc:  # no usable model: keep scans, retry
            log.warning("%s; %d scan(s) wait in the inbox", exc, len(paths))
            for path in paths:
                self.inbox.release(path)
            self._stop.wait(5.0)
            return
        ready: list[tuple[pathlib.Path, Dataset, Any]] = []
        for path in paths:
            key = path.stem
            if self.audit.is_scored(key):
                self.inbox.done(path)
                continue
            data = path.read_bytes()
            try:
                ds: Dataset = dcmread(io.BytesIO(data))
                ready.append((path, ds, preprocess(ds, loaded.image_size)))
            except Exception as exc:
                reason = f"cannot decode or score the image: {type(exc).__name__}: {str(exc)[:200]}"
                # acknowledged already: kept even over the quarantine's cap (nothing acknowledged is lost)
                self.quarantine.put(key, data, reason, STATUS_CANNOT_UNDERSTAND, source="worker", force=True)
                self.audit.failed(key, "failed", reason)
                log.warning("quarantined %s after acknowledging it: %s", key[:16], reason)
                self.inbox.done(path)
        if not ready:
            return
        try:
            scores = self.scorer.predict(loaded, [image for _, _, image in ready])
        except SessionAborted as exc:  # the model server or the dealer is down: keep the scans, retry later
            log.warning("encrypted inference session aborted (%s); %d scan(s) wait in the inbox", exc, len(ready))
            for path, _, _ in ready:
                self.inbox.release(path)
            self._stop.wait(5.0)
            return
        for (path, ds, _), score in zip(ready, scores, strict=True):
            self._finish(path, ds, score, loaded)

    def _finish(self, path: pathlib.Path, ds: Dataset, score: float, model: LoadedModel) -> None:
        """Write the SR to the outbox and the JSON line, then commit the audit row (in that order)."""
        from medfl import __version__

        key = path.stem
        decision = "pneumonia" if score >= self.pcfg.threshold else "normal"
        sr = build_sr(ds, score=score, threshold=self.pcfg.threshold, model_id=model.model_id, version=__version__,
                      encrypted=self.encrypted)
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        sr_key = uid_hash(str(sr.SOPInstanceUID))
        self.outbox.put(sr_key, buf.getvalue())
        self._append_result({"uid_sha256": key, "score": score, "decision": decision, "threshold": self.pcfg.threshold,
                             "model_id": model.model_id, "model_round": model.model_round, "time": time.time(),
                             "sr_sha256": sr_key, "ai_result": True,
                             "scoring": "encrypted" if self.encrypted else "plain"})
        if self.audit.scored(key, score=score, decision=decision, model_id=model.model_id,
                             model_round=model.model_round, sr_sha256=sr_key):
            log.info("scored %s: %.4f (%s) with %s", key[:16], score, decision, model.model_id)
        self.inbox.done(path)

    def _append_result(self, doc: dict[str, Any]) -> None:
        import os

        line = json.dumps(doc) + "\n"
        path = self.results_dir / f"results-{time.strftime('%Y%m%d')}.jsonl"
        with self._results_lock, open(path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    # ---- sender ------------------------------------------------------------------------
    def _sender(self) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, SegmentationStorage  # type: ignore[attr-defined]

        dest = self.pcfg.destination
        ae = AE(ae_title=self.pcfg.ae_title)
        ae.add_requested_context(ComprehensiveSRStorage)
        if self.series is not None:
            ae.add_requested_context(SegmentationStorage)
        assoc = None
        idle_since = time.monotonic()
        failures = 0
        try:
            while not self._stop.is_set():
                path = self.outbox.claim()
                if path is None:
                    if assoc is not None and time.monotonic() - idle_since > 2.0:
                        assoc.release()  # keep the association only while SRs keep coming
                        assoc = None
                    self._stop.wait(0.02)
                    continue
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
                    calm_reactor(assoc)
                ok, why = self._send_one(assoc, path)
                idle_since = time.monotonic()
                if ok:
                    self.audit.sent(path.stem)
                    self.outbox.done(path)
                    failures = 0
                    continue
                if assoc.is_established:
                    assoc.abort()
                assoc = None
                failures += 1
                self.outbox.release(path)  # back to new/: nothing is dropped
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                if failures > self.pcfg.send_retries:
                    self.audit.send_failed(path.stem, why)
                    log.error("cannot deliver SRs to %s@%s:%d after %d tries (%s); still retrying every %.0f s",
                              dest.ae_title, dest.host, dest.port, failures, why, delay)
                else:
                    log.warning("SR delivery failed (%s); retry %d in %.1f s", why, failures, delay)
                self._stop.wait(delay)
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()

    @staticmethod
    def _send_one(assoc: Any, path: pathlib.Path) -> tuple[bool, str]:
        if not assoc.is_established:
            return False, "association rejected or PACS unreachable"
        status = assoc.send_c_store(dcmread(path))
        code = int(getattr(status, "Status", 0xFFFF)) if status else 0xFFFF
        return (code in (0x0000, 0xB000, 0xB007, 0xB006)), f"C-STORE status 0x{code:04X}"

    # ---- watch folder ------------------------------------------------------------------
    def _watch(self, folder: pathlib.Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        while not self._stop.is_set():
            for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
                if time.time() - path.stat().st_mtime < 0.5:
                    continue  # still being written
                try:
                    data = path.read_bytes()
                    self.accept(data, source="watch folder")
                    path.unlink()
                except OSError as exc:
                    log.warning("watch folder: cannot take %s: %s", path.name, exc)
            self._stop.wait(0.5)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Recover the queues and start the SCP, the workers, the sender and the watch folder."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        back = self.inbox.recover() + self.outbox.recover() + (self.series.store.recover() if self.series else 0)
        if back:
            log.info("recovered %d unfinished item(s) after a restart", back)
        self._warm_up()
        if self.series is not None:
            self.series.check_model()  # an unusable [pacs] seg_model_file: the node does not start
        ae = AE(ae_title=self.pcfg.ae_title)
        ae.require_called_aet = True
        if self.pcfg.allowed_calling_aets:
            ae.require_calling_aet = list(self.pcfg.allowed_calling_aets)
        ae.maximum_pdu_size = 0
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, lambda event: 0x0000),
                               (evt.EVT_CONN_OPEN, lambda event: calm_reactor(event.assoc))]
        self._server = ae.start_server((self.pcfg.bind, self.pcfg.port), block=False, evt_handlers=handlers)
        log.info("DICOM node %s listening on %s:%d", self.pcfg.ae_title, self.pcfg.bind, self.pcfg.port)
        targets: list[tuple[str, Any, tuple]] = [(f"score-{i}", self._worker, ()) for i in range(self.pcfg.workers)]
        targets += [(f"sr-sender-{i}", self._sender, ()) for i in range(self.pcfg.senders)]
        if self.series is not None:
            targets.append(("seg-worker", self.series.run, (self._stop,)))
        if self.pcfg.watch_folder is not None:
            targets.append(("watch", self._watch, (self.pcfg.watch_folder,)))
        for name, fn, args in targets:
            t = threading.Thread(target=fn, args=args, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _warm_up(self) -> None:
        """Load the model and the SR machinery before the node answers, so the first scan is not slow.

        A configured ``[pacs] model_file`` that is corrupt or does not fit its model raises
        :class:`StateError` (the node does not start); a federated checkpoint that is, or a model
        not there yet, is logged and scans wait in the inbox.
        """
        import numpy as np

        from medfl import __version__
        from medfl.data.dicom import synthetic_cr

        if self.encrypted:  # a warm-up would run a whole session; check the policy only
            try:
                self.scorer.current()
            except PolicyViolation as exc:
                log.error("%s; scans will wait in the inbox", exc)
            return
        try:
            probe = synthetic_cr(np.zeros((64, 64)), patient_id="WARMUP")
            score, model = self.scorer.score(probe)
            build_sr(probe, score=score, threshold=self.pcfg.threshold, model_id=model.model_id, version=__version__)
        except StateError as exc:
            if self.scorer.model_file is not None:
                raise  # the configured [pacs] model_file is unusable: refuse to start, the message says why
            log.error("%s; scans will wait in the inbox until a usable model arrives", exc)
        except FileNotFoundError as exc:
            log.error("%s; scans will wait in the inbox until a usable model arrives", exc)

    def stop(self) -> None:
        """Stop accepting, give the threads :data:`STOP_GRACE_S` to finish their current item, close.

        A thread still busy then (an encrypted session, a slow PACS) is abandoned: its items were
        claimed, not done, so the next start recovers them into the inbox and scores them (the
        audit row is the commit point, as after a kill).
        """
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        deadline = time.monotonic() + STOP_GRACE_S
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in self._threads if t.is_alive()]
        if busy:
            log.info("not waiting for %s: their items stay in the inbox and outbox for the next start",
                     ", ".join(busy))
            return  # the busy threads may still use the audit log; the process exit closes it
        self.audit.close()

    def wait(self) -> None:
        """Block until :meth:`stop` is called from a signal handler."""
        while not self._stop.is_set():
            self._stop.wait(0.5)
