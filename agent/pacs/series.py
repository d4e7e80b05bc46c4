"""Series assembly for CT/MR: durable per-series folders, a quiet period, and the SEG pipeline.

A series is complete when no new instance of it arrived for ``[pacs] series_quiet_s`` seconds
(PACS gateways do the same: DICOM has no "end of series" message). Its stages are folders,
so a stage change is one atomic rename and survives a kill:

=========== ============================ ==================================================
stage        folder                       next
=========== ============================ ==================================================
receiving    ``series/open/<series>/``    complete (quiet for series_quiet_s)
complete     ``series/ready/<series>/``   segmenting (a worker renames it)
segmenting   ``series/work/<series>/``    done: the SEG is in the outbox and the audit row is
                                          ``scored`` (the commit point); or quarantined
=========== ============================ ==================================================

``<series>`` is the SHA-256 of the SeriesInstanceUID, each file the SHA-256 of its SOP Instance
UID (so a duplicate instance is stored once); no raw UID touches a path or a log line. An
instance is acknowledged only after it is fsynced in ``open/``. On restart, ``work/`` goes back
to ``ready/`` and every ``open/`` series starts a fresh quiet period when the worker starts
(after the model is loaded and the SCP listens), so a half-received series
is completed and segmented once; a series whose audit row is already ``scored`` is not
segmented again (its SEG UIDs derive from the series UID, so a SEG re-sent after a crash
replaces itself in the PACS). An instance arriving after its series was segmented is
acknowledged and kept in the quarantine with that reason.

References
----------
.. [1] DICOM PS3.3 C.7.3.1 (General Series Module), PS3.4 Annex B (Storage Service Class).
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import shutil
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.pacs.inbox import _fsync_dir, uid_hash, write_atomic

__all__ = ["SeriesStage", "SeriesStore"]

log = logging.getLogger(__name__)


class SeriesStage(StrEnum):
    """Where a series is (the folder it sits in)."""

    RECEIVING = "open"
    COMPLETE = "ready"
    SEGMENTING = "work"


#: allowed transitions between stages (module docstring)
TRANSITIONS = {SeriesStage.RECEIVING: SeriesStage.COMPLETE, SeriesStage.COMPLETE: SeriesStage.SEGMENTING}


class SeriesStore:
    """Durable series folders with a quiet-period clock.

    Parameters
    ----------
    root : Path
        The folder holding ``open/``, ``ready/`` and ``work/`` (created).
    quiet_s : float
        Seconds without a new instance after which a series is complete.
    clock : callable, optional
        Monotonic seconds (a fake clock in tests).
    """

    def __init__(self, root: pathlib.Path, *, quiet_s: float, clock: Callable[[], float] = time.monotonic):
        self.root = pathlib.Path(root)
        self.quiet_s = quiet_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        for stage in SeriesStage:
            (self.root / stage.value).mkdir(parents=True, exist_ok=True)

    def _dir(self, stage: SeriesStage, key: str) -> pathlib.Path:
        return self.root / stage.value / key

    def _move(self, key: str, src: SeriesStage, dst: SeriesStage) -> pathlib.Path:
        if TRANSITIONS.get(src) != dst and not (src == SeriesStage.SEGMENTING and dst == SeriesStage.COMPLETE):
            raise ValueError(f"series stage {src} cannot go to {dst}")
        target = self._dir(dst, key)
        os.replace(self._dir(src, key), target)
        _fsync_dir(target.parent)
        return target

    def put(self, series_uid: str, sop_uid: str, data: bytes) -> tuple[str, bool]:
        """Durably store one instance; (series key, False if it was a duplicate of a stored one)."""
        key, name = uid_hash(series_uid), f"{uid_hash(sop_uid)}.dcm"
        with self._lock:
            if any((self._dir(stage, key) / name).exists() for stage in SeriesStage):
                self._last[key] = self.clock()  # a re-sent instance still means the series is still arriving
                return key, False
            folder = self._dir(SeriesStage.RECEIVING, key)
            new = not folder.exists()
            folder.mkdir(exist_ok=True)
            if new:
                _fsync_dir(folder.parent)
            write_atomic(folder / name, data)
            self._last[key] = self.clock()
        return key, True

    def recover(self) -> int:
        """After a restart: segmenting series back to complete, receiving ones get a fresh quiet period."""
        n = 0
        for folder in (self.root / SeriesStage.SEGMENTING.value).iterdir():
            if self._dir(SeriesStage.COMPLETE, folder.name).exists():
                continue  # cannot happen through this class; leave both for an operator
            self._move(folder.name, SeriesStage.SEGMENTING, SeriesStage.COMPLETE)
            n += 1
        for p in self.root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
        now = self.clock()
        with self._lock:
            for folder in (self.root / SeriesStage.RECEIVING.value).iterdir():
                self._last.setdefault(folder.name, now)
                n += 1
        return n

    def restart_quiet(self) -> None:
        """Start a fresh quiet period for every receiving series (when the node starts answering again)."""
        now = self.clock()
        with self._lock:
            for folder in (self.root / SeriesStage.RECEIVING.value).iterdir():
                self._last[folder.name] = now

    def complete_quiet(self) -> list[str]:
        """Move every series quiet for ``quiet_s`` to complete; their keys.

        A series whose earlier batch is still complete or segmenting waits in receiving until
        that one is done (then the caller sees it as late instances).
        """
        now, moved = self.clock(), []
        with self._lock:
            for folder in sorted((self.root / SeriesStage.RECEIVING.value).iterdir()):
                key = folder.name
                last = self._last.setdefault(key, now)
                if now - last < self.quiet_s:
                    continue
                if self._dir(SeriesStage.COMPLETE, key).exists() or self._dir(SeriesStage.SEGMENTING, key).exists():
                    continue
                self._move(key, SeriesStage.RECEIVING, SeriesStage.COMPLETE)
                self._last.pop(key, None)
                moved.append(key)
        return moved

    def claim(self) -> str | None:
        """Take one complete series for segmenting (renamed into ``work/``); its key, or None."""
        for folder in sorted((self.root / SeriesStage.COMPLETE.value).iterdir()):
            try:
                self._move(folder.name, SeriesStage.COMPLETE, SeriesStage.SEGMENTING)
            except FileNotFoundError:
                continue  # another worker took it
            return folder.name
        return None

    def release(self, key: str) -> None:
        """Give a claimed series back (to be retried later)."""
        self._move(key, SeriesStage.SEGMENTING, SeriesStage.COMPLETE)

    def files(self, key: str) -> list[pathlib.Path]:
        """The instance files of a claimed series."""
        return sorted(self._dir(SeriesStage.SEGMENTING, key).glob("*.dcm"))

    def done(self, key: str) -> None:
        """Remove a finished (segmented or quarantined) series."""
        shutil.rmtree(self._dir(SeriesStage.SEGMENTING, key), ignore_errors=True)
        _fsync_dir(self.root / SeriesStage.SEGMENTING.value)

    def pending(self) -> int:
        """Series receiving, complete or segmenting."""
        return sum(len(list((self.root / s.value).iterdir())) for s in SeriesStage)


def read_series(paths: list[pathlib.Path]) -> list[tuple[pathlib.Path, bytes, Dataset | None]]:
    """Each file's bytes and data set (None where pydicom cannot parse it)."""
    out: list[tuple[pathlib.Path, bytes, Any]] = []
    for p in paths:
        data = p.read_bytes()
        try:
            ds: Dataset | None = dcmread(io.BytesIO(data))
        except Exception:  # pydicom raises many types on garbage
            ds = None
        out.append((p, data, ds))
    return out


#: C-STORE statuses of the series path (PS3.4 Table B.2-1)
STATUS_SUCCESS = 0x0000
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


class SeriesPipeline:
    """CT/MR instances in, one DICOM SEG per complete series out (through the durable outbox).

    Parameters
    ----------
    store : SeriesStore
        The series folders.
    audit : AuditLog
        One row per series, keyed by the SHA-256 of its SeriesInstanceUID.
    quarantine : Quarantine
        Where series that do not form a volume (and late instances) go, with the reason.
    outbox : DurableQueue
        The SEG goes here; the service's senders deliver it.
    scorer : Scorer
        Loads the ``[pacs] seg_model_file`` checkpoint (as for the classifier).
    overlap : float
        Sliding-window overlap.
    """

    def __init__(self, *, store: SeriesStore, audit: Any, quarantine: Any, outbox: Any, scorer: Any,
                 overlap: float = 0.25):
        self.store, self.audit, self.quarantine, self.outbox = store, audit, quarantine, outbox
        self.scorer, self.overlap = scorer, overlap

    def check_model(self) -> None:
        """Load the model and run it once on an empty patch, so a wrong model stops the start, not a series.

        Raises
        ------
        StateError
            The checkpoint is not a 3-D segmentation model taking one channel at its patch.
        """
        import numpy as np

        from agent.pacs.seg import predict_labels
        from medfl.errors import StateError
        from medfl.models import model_task

        loaded = self.scorer.current()
        name = loaded.model_id.split(":")[0]
        side = loaded.image_size
        try:
            if model_task(name) != "segmentation":
                raise ValueError(f"{name} is a {model_task(name)} model")
            predict_labels(loaded.model, np.zeros((side, side, side), np.float32), patch=(side, side, side))
        except Exception as exc:
            raise StateError(f"[pacs] seg_model_file {loaded.source} cannot segment one-channel volumes at its "
                             f"patch {side}^3 ({type(exc).__name__}: {str(exc)[:200]}); give a 3-D segmentation "
                             "checkpoint such as unet3d with in_channels=1 and image_size divisible by "
                             "2**depth") from None
        log.info("segmenting CT/MR series with model %s (patch %d^3)", loaded.model_id, side)

    def accept(self, ds: Dataset, data: bytes, *, source: str) -> tuple[int, str]:
        """Durably store one CT/MR instance under its series; the C-STORE status and a comment."""
        sop_key = uid_hash(str(ds.SOPInstanceUID))
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        modality = str(ds.get("Modality", "") or "")
        if not series_uid:
            reason = "the instance has no SeriesInstanceUID; it cannot be assembled into a series"
            self.quarantine.put(sop_key, data, reason, STATUS_DATASET_MISMATCH, source=source)
            self.audit.failed(sop_key, "quarantined", reason, f"series:{modality}")
            log.warning("quarantined %s from %s: %s", sop_key[:16], source, reason)
            return STATUS_DATASET_MISMATCH, reason
        key = uid_hash(series_uid)
        if self.audit.is_scored(key):
            self._late(key, sop_key, data, source)
            return STATUS_SUCCESS, "series already segmented"
        key, new = self.store.put(series_uid, str(ds.SOPInstanceUID), data)
        self.audit.received(key, f"series:{modality}")
        log.info("received %s of series %s from %s%s", sop_key[:16], key[:16], source, "" if new else " (duplicate)")
        return STATUS_SUCCESS, "" if new else "duplicate instance"

    def _late(self, key: str, sop_key: str, data: bytes, source: str) -> None:
        reason = (f"arrived after its series {key[:16]} was segmented (no instance for [pacs] series_quiet_s = "
                  f"{self.store.quiet_s:g} s); raise series_quiet_s if series arrive slower")
        self.quarantine.put(sop_key, data, reason, STATUS_SUCCESS, source=source, series_sha256=key, force=True)
        log.warning("kept %s in the quarantine: %s", sop_key[:16], reason)

    def run(self, stop: threading.Event) -> None:
        """Complete quiet series and segment them until ``stop`` is set."""
        self.store.restart_quiet()  # a sender may have waited for us while we were down or starting
        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:
                log.exception("unexpected failure in the series worker; retrying")
                busy, _ = False, stop.wait(1.0)
            if not busy:
                stop.wait(0.1)

    def step(self) -> bool:
        """Complete the quiet series, then segment one complete series; False if there was none."""
        for done in self.store.complete_quiet():
            log.info("series %s is complete (quiet for %g s)", done[:16], self.store.quiet_s)
        key = self.store.claim()
        if key is None:
            return False
        try:
            self.segment(key)
        except (FileNotFoundError, PermissionError, RuntimeError) as exc:  # no usable model: the series waits
            log.warning("%s; series %s waits", exc, key[:16])
            self.store.release(key)
            return False
        except Exception:  # e.g. the outbox cannot be written: the series goes back, run() logs and retries
            if self.store.files(key):
                self.store.release(key)
            raise
        return True

    def segment(self, key: str) -> None:
        """Segment one claimed series, write the SEG to the outbox, commit the audit row, clear it."""
        from agent.pacs.seg import build_seg, order_slices, predict_labels, volume_of
        from medfl import __version__
        from medfl.errors import DataError

        items = read_series(self.store.files(key))
        if self.audit.is_scored(key):  # done before a crash, or late instances
            for path, data, _ in items:
                self._late(key, path.stem, data, "series worker")
            self.store.done(key)
            return
        loaded = self.scorer.current()
        try:
            if any(ds is None for _, _, ds in items):
                raise DataError("an instance of the series cannot be parsed as DICOM")
            slices = order_slices([ds for _, _, ds in items if ds is not None])
            side = loaded.image_size
            labels, classes = predict_labels(loaded.model, volume_of(slices), patch=(side, side, side),
                                             overlap=self.overlap)
            seg = build_seg(slices, labels, num_classes=classes, model_id=loaded.model_id, version=__version__)
        except DataError as exc:
            self._quarantine(key, items, str(exc))
            return
        except Exception as exc:  # the model or highdicom refused this series: quarantine, never crash
            self._quarantine(key, items, f"cannot segment the series: {type(exc).__name__}: {str(exc)[:200]}")
            return
        buf = io.BytesIO()
        seg.save_as(buf, enforce_file_format=True)
        seg_key = uid_hash(str(seg.SOPInstanceUID))
        self.outbox.put(seg_key, buf.getvalue())
        fraction = float((labels > 0).mean())
        if self.audit.scored(key, score=fraction, decision="segmented", model_id=loaded.model_id,
                             model_round=loaded.model_round, sr_sha256=seg_key):
            log.info("segmented series %s (%d slices, %.1f%% foreground) with %s", key[:16], len(slices),
                     100 * fraction, loaded.model_id)
        self.store.done(key)

    def _quarantine(self, key: str, items: list[tuple[pathlib.Path, bytes, Any]], reason: str) -> None:
        for path, data, _ in items:  # acknowledged already: kept even over the cap
            self.quarantine.put(path.stem, data, reason, STATUS_CANNOT_UNDERSTAND, source="series worker",
                                series_sha256=key, force=True)
        self.audit.failed(key, "quarantined", reason)
        log.warning("quarantined series %s (%d instances): %s", key[:16], len(items), reason)
        self.store.done(key)
