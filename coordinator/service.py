"""The coordinator daemon's socket loop: sessions, liveness, and the job in progress.

The loop owns one ROUTER :class:`~medfl.wire.ServerChannel` (CurveZMQ with the ZAP allow-list
backed by the node table), the sessions of the agents that said hello, and at most one
:class:`~coordinator.rounds.JobRun`. Protocol errors from a peer are answered with a typed
ERROR envelope and one log line, never an exception out of the loop. The operator's CLI
talks to the daemon only through the SQLite store (jobs submitted, nodes approved, the live
status line the daemon writes every second).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from coordinator.admission import Admission
from coordinator.config import CoordinatorConfig
from coordinator.rounds import JobRun, Outgoing
from coordinator.rounds.job import JOB_FROM_AGENT
from coordinator.store import Store
from medfl import __version__
from medfl.errors import (
    ConfigError,
    IncompatibleVersion,
    MedflError,
    OutOfOrder,
    Rejected,
    StateError,
    UnknownPeer,
    WireError,
)
from medfl.jobspec import job_from_dict
from medfl.safetext import escape, fold_name
from medfl.secagg.envelopes import SECAGG_FROM_AGENT
from medfl.versions import agent_refusal
from medfl.wire import Envelope, Incoming, MessageType, ServerChannel, SocketLimits, fingerprint, read_keypair
from medfl.wire.hello import Hello, parse_hello

__all__ = ["CoordinatorService"]

log = logging.getLogger(__name__)


@dataclass
class Session:
    """An agent that said hello on this daemon's lifetime."""

    fingerprint: str
    peer: bytes
    name: str
    hello: Hello
    last_seen: float = field(default_factory=time.monotonic)


class CoordinatorService:
    """The coordinator daemon.

    Parameters
    ----------
    cfg : CoordinatorConfig
        Parsed coordinator.toml.
    """

    def __init__(self, cfg: CoordinatorConfig):
        self.cfg = cfg
        self.store = Store(cfg.db_path)
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        keys = read_keypair(cfg.keys.secret_key_file) if cfg.transport.curve and cfg.keys.secret_key_file else None
        if not cfg.transport.curve:
            log.warning("transport.curve = false: traffic is NOT encrypted or authenticated (tests only)")
        self.admission = Admission(self.store, cfg.enrollment, fingerprint=fingerprint)
        limits = SocketLimits(max_message_bytes=cfg.transport.max_message_mb * 2**20)
        self.channel = ServerChannel(bind=cfg.coordinator.bind, keys=keys,
                                     is_allowed=self._is_allowed if keys else None, limits=limits, admit=self._admit)
        self.sessions: dict[str, Session] = {}
        self.by_peer: dict[bytes, str] = {}
        self._models: frozenset[str] | None = None
        self._told_unknown: set[bytes] = set()  # peers already asked to say hello (one log line each)
        self.run: JobRun | None = None
        self._stop = threading.Event()
        self._last_housekeeping = 0.0
        log.info("coordinator %s listening on %s (curve=%s)", cfg.coordinator.name, self.channel.endpoint,
                 cfg.transport.curve)
        self.store.set_meta("endpoint", self.channel.endpoint)
        self.model_server = self._start_model_server(keys) if cfg.inference.enabled else None
        from coordinator.metrics import CoordinatorMetrics

        self.metrics = CoordinatorMetrics(self.store, lambda: len(self.sessions))
        self._counted = {"bytes_in": 0, "bytes_out": 0, "event": self.store.last_event_id()}
        self._started_at = time.time()
        self._observed: set[tuple[str, int]] = set()  # (job, round) already in the round metrics
        self.web = self._start_web() if cfg.web.enabled else None

    def _start_web(self) -> Any:
        """Serve the status page and /metrics from a thread (``[web]``); see coordinator.web."""
        from coordinator.statuspage import render_status
        from coordinator.statusview import status_dict
        from coordinator.web import StatusServer, read_token

        host, port = self.cfg.web.host_port
        token = read_token(self.cfg.web_token_file)
        try:
            web = StatusServer(host=host, port=port, token=token, metrics=self.metrics.exposition,
                               page=lambda: render_status(self.store, coordinator=self.cfg.coordinator.name),
                               status_json=lambda: status_dict(self.store))
        except OSError as exc:  # the federation matters more than its status page: serve on without it
            log.error("status page NOT served: cannot listen on [web] bind = %s: %s; pick a free port in "
                      "coordinator.toml's [web] table (or enabled = false) and restart", self.cfg.web.bind, exc)
            return None
        web.start()
        log.info("status page on %s (%s)", web.url, "loopback clients only: no token file at "
                 f"{self.cfg.web_token_file}" if token is None else "other clients need the bearer token")
        self.store.set_meta("web", web.url)
        return web

    def _served_checkpoint(self) -> tuple[Any, int | None]:
        """``[inference] checkpoint``, else the newest global model of the federation (and its job's image size)."""
        import pathlib

        from medfl.errors import NotFound

        inf = self.cfg.inference
        if inf.checkpoint is not None:
            return inf.checkpoint, None
        files = sorted(self.cfg.checkpoint_dir.glob("*/round-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        if not files:
            raise StateError(f"[inference] has no checkpoint and no federated model exists yet under "
                             f"{self.cfg.checkpoint_dir}; run a job first or set inference.checkpoint")
        newest: pathlib.Path = files[-1]
        try:
            side = int(self.store.job(newest.parent.name).spec["job"]["image_size"])
        except (NotFound, KeyError, TypeError, ValueError):
            side = None
        log.info("serving the newest federated model %s", newest)
        return newest, side

    def _start_model_server(self, keys: Any) -> Any:
        """Host the model server of ``[inference]`` in a thread (same key, same approved agents)."""
        from coordinator.inference import HostedModelServer, load_served, make_model_server, store_writer
        from medfl.wire import read_public_key

        inf = self.cfg.inference
        if keys is None:
            raise ConfigError([("inference.enabled", "encrypted inference needs transport.curve = true")])
        checkpoint, side = self._served_checkpoint()
        served = load_served(checkpoint, calibration_dir=inf.calibration_dir, image_size=side)
        auth_store = Store(self.cfg.db_path)

        def is_allowed(k: bytes) -> bool:
            return auth_store.is_approved(k.decode("ascii") if isinstance(k, bytes) else str(k))

        server = make_model_server(served=served, bind=inf.bind, keys=keys, is_allowed=is_allowed, dealer=inf.dealer,
                                   dealer_key=read_public_key(str(inf.dealer_key_file)), timeout_s=inf.timeout_s,
                                   on_change=store_writer(self.cfg.db_path))
        hosted = HostedModelServer(server=server)
        hosted.start()
        log.info("model server for %s hosted on %s (dealer %s)", served.name, server.channel.endpoint, inf.dealer)
        self.store.set_meta("inference_endpoint", server.channel.endpoint)
        return hosted

    # ---- authentication (runs in the ZAP thread) ---------------------------------------
    def _is_allowed(self, public_key: bytes) -> bool:
        return self.admission(public_key)

    def _admit(self, incoming: Incoming, tensor_bytes: int) -> None:
        """Refuse, from its header alone, a message whose tensors this daemon would only throw away."""
        env = incoming.envelope
        if not tensor_bytes or env.type in (MessageType.HELLO, MessageType.ENROLL):
            return
        fp = self.by_peer.get(incoming.peer)
        if fp is None or fp not in self.sessions:
            raise UnknownPeer(f"{env.type} with {tensor_bytes} bytes of tensors before hello; say hello first")
        run = self.run
        if (env.type in SECAGG_FROM_AGENT or env.type == MessageType.UPDATE) and (run is None
                                                                                  or env.job != run.job_id):
            raise OutOfOrder(f"{env.type} for job {env.job!r} but the running job is "
                             f"{run.job_id if run else 'none'}; its {tensor_bytes} bytes of tensors were not decoded")

    # ---- main loop ---------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return (thread-safe)."""
        self._stop.set()

    def serve(self) -> None:
        """Run until :meth:`stop` is called."""
        try:
            while not self._stop.is_set():
                if self.channel.poll(100):
                    for _ in range(64):  # drain a burst, but keep housekeeping going
                        incoming = self.channel.recv()
                        if incoming is not None:
                            self._dispatch(incoming.peer, incoming.user_id, incoming.envelope)
                        if not self.channel.poll(0):
                            break
                self._housekeeping()
        finally:
            if self.model_server is not None:
                self.model_server.stop()
            if self.web is not None:
                self.web.stop()
            self.channel.close()
            self.store.set_meta("daemon", json.dumps({"pid": os.getpid(), "state": "stopped", "t": time.time()}))
            self.store.close()

    def _send(self, out: list[Outgoing]) -> None:
        for fp, env in out:
            sess = self.sessions.get(fp)
            if sess is None:
                log.info("not sending %s to %s: not connected", env.type, fp[:16])
                continue
            if self.channel.send(sess.peer, env):
                self.metrics.messages_out.labels(str(env.type)).inc()

    def _who(self, peer: bytes, user_id: str = "") -> str:
        """The peer as the operator knows it: its session's name and key fingerprint, else the fingerprint."""
        fp = self.by_peer.get(peer) or user_id
        sess = self.sessions.get(fp) if fp else None
        if sess is not None:
            return f"{escape(sess.name, limit=64)} ({fp[:23]})"
        return f"key {fp[:23]}" if fp else f"connection {peer.hex()[:16]} (no CURVE key: plain transport)"

    def _error(self, peer: bytes, env: Envelope | None, exc: WireError, user_id: str = "") -> None:
        self.metrics.errors.labels(exc.code).inc()
        log.warning("protocol error from %s: %s %s", self._who(peer, user_id), exc.code, escape(exc, limit=500))
        self.channel.send(peer, Envelope(type=MessageType.ERROR, body={
            "code": exc.code, "message": str(exc), "in_reply_to": env.seq if env else None}))

    def _dispatch(self, peer: bytes, user_id: str, env: Envelope) -> None:
        self.metrics.messages_in.labels(str(env.type)).inc()
        try:
            self._handle(peer, user_id, env)
        except UnknownPeer as exc:  # expected after a restart: the agent's hello follows
            if peer not in self._told_unknown:
                if len(self._told_unknown) > 10_000:
                    self._told_unknown.clear()
                self._told_unknown.add(peer)
                log.info("%s from %s before its hello (expected after a restart); asked it to say hello",
                         env.type, self._who(peer, user_id))
            self.channel.send(peer, Envelope(type=MessageType.ERROR, body={
                "code": exc.code, "message": str(exc), "in_reply_to": env.seq}))
        except WireError as exc:
            self._error(peer, env, exc, user_id)
        except MedflError as exc:
            log.warning("rejected %s from %s: %s", env.type, self._who(peer, user_id), escape(exc, limit=500))
            self._error(peer, env, Rejected(str(exc)), user_id)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the daemon (and every hospital's job) down
            log.error("internal error handling %s from %s: %s: %s (the message was dropped; please report this "
                      "with the debug log)", env.type, self._who(peer, user_id), type(exc).__name__,
                      escape(exc, limit=300))
            log.debug("internal error detail", exc_info=True)
            self.channel.send(peer, Envelope(type=MessageType.ERROR, body={
                "code": "internal", "message": f"the coordinator could not handle this {env.type}",
                "in_reply_to": env.seq}))

    def _handle(self, peer: bytes, user_id: str, env: Envelope) -> None:
        mtype = env.type
        if mtype == MessageType.HELLO:
            self._on_hello(peer, user_id, env)
            return
        if mtype == MessageType.ENROLL:
            self._on_enroll(peer, user_id, env)
            return
        fp = self.by_peer.get(peer)
        if fp is None or fp not in self.sessions:
            raise UnknownPeer(f"{mtype} before hello (the coordinator may have restarted); say hello first")
        sess = self.sessions[fp]
        sess.last_seen = time.monotonic()
        if mtype == MessageType.HEARTBEAT:
            return
        if mtype == MessageType.BYE:
            self._drop(fp, "said bye")
            return
        if mtype == MessageType.ERROR:
            log.warning("agent %s reported error %s: %s", escape(sess.name, limit=64),
                        escape(env.body.get("code"), limit=40), escape(env.body.get("message"), limit=500))
            return
        run = self.run
        if mtype in JOB_FROM_AGENT:
            if run is None or env.job != run.job_id:
                raise OutOfOrder(f"{mtype} for job {env.job!r} but the running job is "
                                 f"{run.job_id if run else 'none'}")
            self._send(run.on_agent_message(fp, sess.name, env))
            return
        raise OutOfOrder(f"agents do not send {mtype} to the coordinator")

    def _known_models(self) -> frozenset[str]:
        if self._models is None:
            from medfl.models import list_models  # lazy: torch loads once, at the first hello

            self._models = frozenset(list_models())
        return self._models

    def _name_taken(self, fp: str, name: str) -> str | None:
        """The fingerprint of another node that already goes by ``name`` (compared case- and width-folded)."""
        folded = fold_name(name)
        for other in self.sessions.values():
            if other.fingerprint != fp and fold_name(other.name) == folded:
                return other.fingerprint
        for node in self.store.nodes():
            if node.fingerprint != fp and node.status == "approved" and node.name and fold_name(node.name) == folded:
                return node.fingerprint
        return None

    def _on_enroll(self, peer: bytes, user_id: str, env: Envelope) -> None:
        from coordinator.invitations import redeem

        if not user_id:
            raise Rejected("enrollment by invitation needs transport.curve = true")
        done = redeem(self.store, user_id, env.body, name_taken=self._name_taken)
        node = done.node
        log.info("agent %s (%s) enrolled by invitation %s%s", escape(node.name, limit=64), node.fingerprint[:23],
                 done.invitation_id, " (again: the same key, the reply was lost)" if done.again else "")
        self.channel.send(peer, Envelope(type=MessageType.ENROLLED, body={
            "fingerprint": node.fingerprint, "name": node.name, "coordinator": self.cfg.coordinator.name}))

    def _on_hello(self, peer: bytes, user_id: str, env: Envelope) -> None:
        if user_id and self.store.invitation(user_id) is not None:
            raise Rejected("this connection uses an invitation key, which can only enroll: run "
                           "'medfl-agent enroll INVITATION' (it makes the agent's own key), then 'medfl-agent serve'")
        hello = parse_hello(env.body, known_models=self._known_models())
        why = agent_refusal(hello.version)
        if why is not None:
            raise IncompatibleVersion(why)
        fp = user_id or f"plain:{hello.name}"
        name = hello.name
        if user_id:
            given = self.store.node(fp).name
            if given and fold_name(given) != fold_name(name):
                name = given  # the operator's (or the first hello's) name wins over what the agent says now
        clash = self._name_taken(fp, name)
        if clash is not None:
            raise Rejected(f"name {escape(name, limit=64)!r} is already used by another agent ({clash[:23]}); "
                           "set a different [agent] name in agent.toml, or the operator names this key with "
                           f"'medfl-coordinator nodes approve {fp[:23]} --name NAME'")
        old = self.sessions.get(fp)
        if old is not None and old.peer != peer:
            self.by_peer.pop(old.peer, None)
            self.channel.forget(old.peer)
            log.warning("agent %s (%s) connected again from a new connection: the old connection %s is closed "
                        "and the new one %s takes over its session%s", escape(name, limit=64), fp[:23],
                        old.peer.hex()[:16], peer.hex()[:16],
                        f" (job {self.run.job_id} counts it once)" if self.run is not None else "")
        self.sessions[fp] = Session(fingerprint=fp, peer=peer, name=name, hello=hello)
        self.by_peer[peer] = fp
        self._told_unknown.discard(peer)
        if user_id:
            self.store.set_node_name(fp, name, version=hello.version)
        if old is not None and old.peer == peer:  # a repeated hello on the same connection: one line per connection
            log.debug("agent %s said hello again on the same connection", escape(name, limit=64))
        else:
            log.info("agent %s (%s) connected: %d train / %d val samples", escape(name, limit=64), fp[:23],
                     hello.train_samples, hello.val_samples)
        self.channel.send(peer, Envelope(type=MessageType.WELCOME, body={"coordinator": self.cfg.coordinator.name,
                                                                         "version": __version__, "time": time.time()}))
        if self.run is not None:
            self._send(self.run.offer(fp))

    def _drop(self, fp: str, why: str) -> None:
        sess = self.sessions.pop(fp, None)
        if sess is None:
            return
        self.by_peer.pop(sess.peer, None)
        self.channel.forget(sess.peer)
        if self.run is not None:
            self.metrics.dropouts.inc()
            self._send(self.run.on_offline(fp))
        log.info("agent %s offline: %s", escape(sess.name, limit=64), why)

    # ---- housekeeping ------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        timeout = self.cfg.liveness.agent_timeout_s
        for fp, sess in list(self.sessions.items()):
            if now - sess.last_seen > timeout:
                self._drop(fp, f"silent for {now - sess.last_seen:.0f} s")
        if self.run is not None:
            self._send(self.run.tick(set(self.sessions)))
        if now - self._last_housekeeping < 0.5:
            return
        self._last_housekeeping = now
        self.admission.tick()
        self._check_jobs()
        self._count()
        self.store.set_meta("daemon", json.dumps({
            "pid": os.getpid(), "state": "serving", "t": time.time(), "endpoint": self.channel.endpoint,
            "online": sorted(s.name for s in self.sessions.values()),
            "run": self.run.describe() if self.run else None,
            "waiting": self.run.state.message if self.run else "",
        }))

    def _count(self) -> None:
        """Feed the live metrics: the channel's byte counts and the rounds and retries logged since the last call."""
        m, c = self.metrics, self._counted
        for key, counter in (("bytes_in", m.bytes_in), ("bytes_out", m.bytes_out)):
            now = getattr(self.channel, key)
            counter.inc(max(0, now - c[key]))
            c[key] = now
        for e in self.store.events_after(c["event"]):
            c["event"] = e["id"]
            if e["kind"] == "round" and e["job_id"]:
                for r in self.store.rounds(e["job_id"]):
                    if r.finished_at >= self._started_at and (r.job_id, r.round) not in self._observed:
                        self._observed.add((r.job_id, r.round))
                        m.rounds.inc()
                        m.round_seconds.observe(r.seconds)
            elif e["kind"] == "retry":
                m.retries.inc()

    def _check_jobs(self) -> None:
        run = self.run
        if run is not None:
            status = self.store.job(run.job_id).status
            if status == "cancelled":
                log.info("job %s cancelled by the operator", run.job_id)
                self.run = None
            elif run.finished:
                ok = run.state.stage == "done"
                self.store.set_job_status(run.job_id, "done" if ok else "failed",
                                          "completed" if ok else run.state.message)
                log.info("job %s %s", run.job_id, "done" if ok else f"failed: {run.state.message}",
                         extra={"job": run.job_id, "status": "done" if ok else "failed"})
                self.run = None
        if self.run is None:
            pending = self.store.jobs(status="running") + self.store.jobs(status="queued")
            if pending:
                self._start(pending[0].id)

    def _start(self, job_id: str) -> None:
        row = self.store.job(job_id)
        try:
            spec = job_from_dict(row.spec, source=f"job {job_id}")
            run = JobRun(job_id=job_id, spec=spec, store=self.store, checkpoint_dir=self.cfg.checkpoint_dir,
                         eval_deadline_s=self.cfg.liveness.eval_deadline_s)
            run.start()
        except (ConfigError, StateError, OSError, ValueError) as exc:
            log.error("job %s cannot start: %s", job_id, exc)
            self.store.set_job_status(job_id, "failed", f"cannot start: {exc}")
            return
        self.store.set_job_status(job_id, "running")
        self.run = run
        log.info("job %s (%s) started at round %d", job_id, spec.job.name, run.state.round,
                 extra={"job": job_id, "round": run.state.round, "status": "running"})
        for fp in list(self.sessions):
            self._send(run.offer(fp))

