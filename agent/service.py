"""The hospital agent daemon: connects out to the coordinator, trains and validates locally.

The agent only ever connects out (a ZeroMQ DEALER; hospital firewalls allow outbound only),
pins the coordinator's CURVE public key, says HELLO first on every new connection (the
coordinator restarted, or the link dropped: the coordinator's session is gone either way) and
again until it is welcomed, and heart-beats only while connected and welcomed, so a restarted
coordinator never sees a heartbeat before the hello. An ``unknown_peer`` error (a heartbeat
that crossed a restart) gets one hello unless one is already on its way. ZeroMQ reconnects by
itself with exponential backoff. The jobs themselves (offers, rounds, secure sums, each
checked against the local policy) are :class:`agent.session.JobSession`, which this loop
feeds and whose replies it sends. Training and validation run in a worker thread so the
socket loop keeps heart-beating (:mod:`agent.rounds`, which also holds the DP budget checks);
results from a superseded round are dropped.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from agent.config import AgentConfig
from agent.rounds import RoundWorker
from agent.session import JOB_MESSAGES, JobSession
from agent.status import StatusFile
from medfl import __version__, envvars
from medfl.errors import ConfigError, MedflError
from medfl.safetext import escape
from medfl.versions import parse_version
from medfl.wire import ClientChannel, Envelope, MessageType, SocketLimits, read_keypair, read_public_key
from medfl.wire.messages import REFUSED_RETRY_MAX_S

__all__ = ["AgentService"]

log = logging.getLogger(__name__)

HELLO_RETRY_S = 2.0
#: the hello is repeated this often while the coordinator refuses this agent's version
VERSION_RETRY_S = 60.0
HEARTBEAT_S = 2.0
MAX_BACKOFF_S = REFUSED_RETRY_MAX_S  # 'nodes approve' quotes this cap to the operator


class AgentService:
    """The agent daemon.

    Parameters
    ----------
    cfg : AgentConfig
        Parsed agent.toml.
    """

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        threads = int(envvars.get("MEDFL_TORCH_THREADS", str(cfg.training.torch_threads)) or 0)
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.work = RoundWorker(cfg)  # validates the data set at start-up: fail early and clearly
        # what HELLO announces: images (or segmentation cases) per split
        self.splits = self.work.seg_splits((32, 32, 32)) if self.work.segmentation_data else self.work.splits(64)
        if cfg.transport.curve:
            if cfg.keys.secret_key_file is None or cfg.coordinator.public_key_file is None:
                raise ConfigError([("keys", "transport.curve = true needs keys.secret_key_file and "
                                    "coordinator.public_key_file")])
            keys = read_keypair(cfg.keys.secret_key_file)
            server_key = read_public_key(cfg.coordinator.public_key_file)
        else:
            log.warning("transport.curve = false: traffic is NOT encrypted or authenticated (tests only)")
            keys, server_key = None, None
        limits = SocketLimits(max_message_bytes=cfg.transport.max_message_mb * 2**20)
        self.channel = ClientChannel(connect=cfg.coordinator.endpoint, keys=keys, server_public_key=server_key,
                                     limits=limits)
        self.session = JobSession(cfg, self.work)  # offers, rounds and secure sums (transport-free)
        self.welcomed = False
        self._told_version = False  # the version refusal is logged once
        self.status = StatusFile(cfg.agent.state_dir)  # what 'medfl-agent status' reads
        self._last_hello = -math.inf
        self._last_send = -math.inf
        self._stop = threading.Event()
        self._backoff = 1.0
        self._retry_at = 0.0
        self._handshakes = 0  # the channel's handshakes already answered with a hello

    # ---- loop --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return (thread-safe)."""
        self._stop.set()

    def serve(self) -> None:
        """Run until :meth:`stop` is called."""
        log.info("agent %s connecting to %s", self.cfg.agent.name, self.cfg.coordinator.endpoint)
        try:
            while not self._stop.is_set():
                env = self.channel.recv(timeout_ms=100)
                if env is not None:
                    try:
                        self._handle(env)
                    except MedflError as exc:
                        log.warning("could not handle %s: %s", env.type, exc)
                self._flush_results()
                self._keepalive()
                cur = self.session.current
                self.status.update(connected=self.channel.connected, welcomed=self.welcomed,
                                   job=cur[0] if cur else None, round=cur[1] if cur else None,
                                   work=cur[2] if cur else "")
        finally:
            try:
                if self.welcomed:
                    self._send(Envelope(type=MessageType.BYE))
            finally:
                self.channel.close()
                self.work.close()

    def _send(self, env: Envelope) -> None:
        self.channel.send(env)
        self._last_send = time.monotonic()

    def _keepalive(self) -> None:
        now = time.monotonic()
        ch = self.channel
        ch.poll_events()
        if ch.auth_failed and now >= self._retry_at:
            # libzmq does not retry a connection whose key was refused: reconnect ourselves, with backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            self._retry_at = now + self._backoff
            log.info("reconnecting to %s (next try in %.0f s)", self.cfg.coordinator.endpoint, self._backoff)
            ch.reconnect()
            self.welcomed, self._handshakes = False, 0
        elif ch.handshakes != self._handshakes and ch.connected:
            self._handshakes = ch.handshakes  # a new connection: hello goes first, before any heartbeat
            self.welcomed = False
            self._hello()
        elif not ch.connected:
            if self.welcomed:
                log.info("lost the connection to %s; waiting for the coordinator to come back",
                         self.cfg.coordinator.endpoint)
            self.welcomed = False
        elif not self.welcomed and now - self._last_hello > HELLO_RETRY_S:
            self._hello()
        elif self.welcomed and now - self._last_send > HEARTBEAT_S:
            self._send(Envelope(type=MessageType.HEARTBEAT))

    def _hello(self) -> None:
        splits = self.splits
        self._send(Envelope(type=MessageType.HELLO, body={
            "name": self.cfg.agent.name, "version": __version__,
            "models": list(self.cfg.policy.allowed_models), "min_parties": self.cfg.policy.min_parties,
            "train_samples": len(splits["train"]), "val_samples": len(splits["val"])}))
        self._last_hello = time.monotonic()

    def _flush_results(self) -> None:
        for env in self.session.flush():
            self._send(env)

    # ---- messages ----------------------------------------------------------------------
    def _handle(self, env: Envelope) -> None:
        mtype = env.type
        if mtype == MessageType.WELCOME:
            if not self.welcomed:
                theirs = str(env.body.get("version") or "?")
                log.info("connected to coordinator %s at %s (welcomed; it runs medfl %s)",
                         escape(env.body.get("coordinator"), limit=64), self.cfg.coordinator.endpoint,
                         escape(theirs, limit=32))
                ahead, ours = parse_version(theirs), parse_version(__version__)
                if ahead is not None and ours is not None and ahead[:2] > ours[:2]:
                    log.warning("the coordinator runs medfl %s and this agent %s: it serves agents one minor "
                                "version behind it, so upgrade medfl-agent to %d.%d before its next release",
                                escape(theirs, limit=32), __version__, ahead[0], ahead[1])
            self.welcomed = True
            self._backoff = 1.0
            sent_at = env.body.get("time")
            skew = time.time() - float(sent_at) if isinstance(sent_at, (int, float)) and \
                not isinstance(sent_at, bool) and math.isfinite(sent_at) else None
            self.status.update(coordinator=str(env.body.get("coordinator") or "")[:64],
                               coordinator_version=str(env.body.get("version") or "")[:32], clock_skew_s=skew)
        elif mtype == MessageType.ERROR and env.body.get("code") == "unknown_peer":
            if not self.welcomed and time.monotonic() - self._last_hello < HELLO_RETRY_S:
                log.debug("coordinator does not know this agent yet; the hello is on its way")
                return
            log.info("the coordinator does not know this agent (it restarted); saying hello again")
            self.welcomed = False
            self._hello()
        elif mtype == MessageType.ERROR and env.body.get("code") == "incompatible_version":
            if not self._told_version:
                log.error("the coordinator does not serve this agent's version (medfl %s): %s; retrying every "
                          "%.0f s in case it is upgraded", __version__, escape(env.body.get("message"), limit=400),
                          VERSION_RETRY_S)
            self._told_version = True
            self._last_hello = time.monotonic() + VERSION_RETRY_S - HELLO_RETRY_S
        elif mtype == MessageType.ERROR:
            log.warning("coordinator error %s: %s", escape(env.body.get("code"), limit=40),
                        escape(env.body.get("message"), limit=600))
        elif mtype in JOB_MESSAGES:
            for reply in self.session.handle(env):
                self._send(reply)
        else:
            log.warning("ignoring unexpected %s from the coordinator", mtype)
