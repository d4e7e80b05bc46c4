"""The data owner's side of encrypted inference (party 0): request, check, open material, run.

The data owner connects out to a model server whose key it pins, asks for a session, checks
the announcement (a registry name and shapes, never code; the dealer's key against the
pinned dealers), opens the dealer's chunks sealed to its own ephemeral key, runs the online
phase and alone reconstructs the logits. Any failure aborts the session on both sides with
a :class:`~medfl.errors.SessionAborted` naming its cause.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfl.errors import PolicyViolation, SessionAborted
from medfl.models import create_model
from medfl.smpc.dealer import Opener, unpack_items
from medfl.smpc.evaluator import Calibration
from medfl.smpc.session.party import PartyRunner, ReplayDealer, expect
from medfl.wire.envelope import Envelope
from medfl.wire.messages import MessageType
from medfl.wire.transport import ClientChannel

__all__ = ["ImageReport", "SessionReport", "infer_remote", "softmax_positive"]


@dataclass(frozen=True)
class ImageReport:
    """One image: logits, positive-class probability and what it cost this session."""

    logits: np.ndarray
    score: float
    online_seconds: float
    bytes_online: int
    rounds: int


@dataclass
class SessionReport:
    """A whole session as the data owner saw it."""

    session: str
    description: dict[str, Any]
    images: list[ImageReport] = field(default_factory=list)
    offline_seconds: float = 0.0
    bytes_offline: int = 0
    prepare_seconds: float = 0.0
    prepare_bytes: int = 0
    prepare_rounds: int = 0
    seconds: float = 0.0
    queued_seconds: float = 0.0
    view: list[bytes] | None = None


def softmax_positive(logits: np.ndarray) -> float:
    """Probability of class 1 from logits (the score the plain model reports)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return float(e[1] / e.sum()) if z.size > 1 else float(1 / (1 + np.exp(-z[0])))


class _ClientLink:
    def __init__(self, channel: ClientChannel):
        self.channel = channel

    def send(self, env: Envelope) -> None:
        if not self.channel.send(env):
            raise SessionAborted("cannot reach the model server (send queue full, no connection)", code="timeout")

    def send_first(self, env: Envelope, timeout_s: float) -> None:
        """Send the request, waiting for the connection (nothing else is in flight yet)."""
        deadline = time.monotonic() + timeout_s
        while not self.channel.send(env):
            self.channel.recv(100)  # lets the channel see a refused handshake
            self._check_auth()
            if time.monotonic() > deadline:
                raise SessionAborted(f"cannot reach the model server within {timeout_s:g} s", code="timeout")

    def _check_auth(self) -> None:
        if self.channel.auth_failed:
            raise SessionAborted("the model server refused this data owner's key (CURVE handshake); ask its "
                                 "operator to approve it ('medfl-coordinator nodes approve agent.key')",
                                 code="auth")

    def recv(self, timeout_s: float) -> Envelope | None:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            env = self.channel.recv(min(int(left * 1000) + 1, 500))
            self._check_auth()
            if env is None:
                continue
            if env.type == MessageType.ERROR:
                raise SessionAborted(f"the model server refused a message: {env.body.get('code')}: "
                                     f"{env.body.get('message')}", code="peer")
            return env


def _calibration(desc: dict[str, Any]) -> Calibration | None:
    cal = desc.get("calibration")
    if cal is None:
        return None
    acts = cal.get("act_bounds")
    return Calibration(float(cal["input_bound"]), tuple((float(a), float(b)) for a, b in cal["variances"]),
                       None if acts is None else tuple(float(a) for a in acts))


def _abort_peer(link: _ClientLink, session: str, exc: SessionAborted) -> None:
    try:
        link.channel.send(Envelope(type=MessageType.SMPC_ABORT, body={"session": session, "code": exc.code,
                                                                      "message": str(exc)}))
    except Exception:  # noqa: BLE001 - best effort: the session is over either way
        pass


def infer_remote(*, channel: ClientChannel, model: str, images: Sequence[np.ndarray],
                 trusted_dealers: Collection[bytes] | None, timeout_s: float = 60.0,
                 queue_timeout_s: float = 600.0, record: bool = False) -> SessionReport:
    """Run one session of encrypted inference of ``images`` against a model server.

    Parameters
    ----------
    channel : ClientChannel
        Connected to the model server with its key pinned.
    model : str
        The model id (registry name) to ask for.
    images : sequence of ndarray
        Preprocessed (C, H, W) images, as the model was trained.
    trusted_dealers : collection of bytes, optional
        Raw X25519 public keys of dealers this data owner accepts; None accepts the announced one.
    timeout_s : float
        Silence of the other parties after which the session aborts.
    queue_timeout_s : float
        How long to wait in the model server's queue.
    record : bool
        Keep every share received (privacy tests).

    Returns
    -------
    SessionReport

    Raises
    ------
    SessionAborted
        The session could not complete (the cause is in ``code``).
    PolicyViolation
        The announced dealer is not trusted.
    """
    t_start = time.perf_counter()
    link = _ClientLink(channel)
    own = X25519PrivateKey.generate()
    link.send_first(Envelope(type=MessageType.SMPC_REQUEST, body={
        "model": model, "images": len(images), "party_key": own.public_key().public_bytes_raw()}), timeout_s)
    session = ""
    deadline = time.monotonic() + queue_timeout_s
    while True:
        # the model server answers within timeout_s and, while we are queued, repeats our position
        # every few seconds; the sessions ahead of ours may take up to queue_timeout_s in all
        env = link.recv(max(0.0, min(timeout_s, deadline - time.monotonic())))
        if env is None:
            raise SessionAborted(f"still queued after {queue_timeout_s:g} s" if time.monotonic() >= deadline else
                                 f"no word from the model server within {timeout_s:g} s: the other party "
                                 "disappeared", code="timeout")
        if env.type == MessageType.SMPC_ABORT:
            raise SessionAborted(f"the model server refused: {env.body.get('message')}",
                                 code=str(env.body.get("code", "peer")))
        if env.type == MessageType.SMPC_QUEUED:
            session = str(env.body.get("session"))
            continue
        if env.type == MessageType.SMPC_ANNOUNCE and env.body.get("session") == session:
            break
        raise SessionAborted(f"unexpected {env.type} while waiting for the announcement", code="plan")
    queued = time.perf_counter() - t_start
    try:
        return _run(link, env.body, own, images, trusted_dealers, timeout_s, record, t_start, queued)
    except (SessionAborted, PolicyViolation, ValueError) as exc:
        err = exc if isinstance(exc, SessionAborted) else SessionAborted(str(exc), code="policy")
        _abort_peer(link, session, err)
        raise


def _run(link: _ClientLink, body: Any, own: X25519PrivateKey, images: Sequence[np.ndarray],
         trusted_dealers: Collection[bytes] | None, timeout_s: float, record: bool, t_start: float,
         queued: float) -> SessionReport:
    session, desc, dealer_key = str(body["session"]), dict(body["description"]), body.get("dealer_key")
    if not isinstance(dealer_key, bytes) or len(dealer_key) != 32:
        raise SessionAborted("announcement without a 32-byte dealer key", code="plan")
    if trusted_dealers is not None and dealer_key not in set(trusted_dealers):
        raise PolicyViolation("the model server announced a dealer this agent does not trust; add its public key "
                              "to [inference] trusted_dealers in agent.toml if it is the right one")
    in_shape = tuple(int(d) for d in desc["in_shape"])
    for img in images:
        if tuple(np.shape(img)) != in_shape:
            raise ValueError(f"image shape {np.shape(img)} does not match the model's input {in_shape}; "
                             "preprocess it as the model was trained")
    skeleton = create_model(str(desc["model"]), **dict(desc.get("kwargs") or {})).eval()
    report = SessionReport(session=session, description=desc, queued_seconds=queued)
    opener = Opener(party_secret=own, dealer_public=dealer_key, session=session, party=0)
    stream = bytearray()  # grown chunk by chunk: peak memory is the material once, not twice
    t0 = time.perf_counter()
    while not opener.done:
        env = expect(link, MessageType.SMPC_MATERIAL, session=session, timeout_s=timeout_s,
                     what="dealer material")
        if env.body.get("party") != 0:
            raise SessionAborted("relayed material is marked for the other party", code="auth")
        chunk = opener.open_message(env.body, env.tensors)
        report.bytes_offline += env.tensors["c"].nbytes
        stream += chunk
    dealer = ReplayDealer(0, unpack_items(stream))
    report.offline_seconds = time.perf_counter() - t0
    runner = PartyRunner(party=0, model=skeleton, in_shape=in_shape,  # type: ignore[arg-type]
                         calibration=_calibration(desc), dealer=dealer, session=session, link=link,
                         timeout_s=timeout_s, frac_bits=int(desc.get("frac_bits", 16)), record=record)
    report.prepare_seconds, report.prepare_rounds = runner.prepare_seconds, runner.prepare_rounds
    report.prepare_bytes = runner.channel.bytes_sent + runner.channel.bytes_received
    for img in images:
        b0 = runner.channel.bytes_sent + runner.channel.bytes_received
        res = runner.infer(np.asarray(img, np.float32))
        logits = res.logits if res.logits is not None else np.zeros(0)
        report.images.append(ImageReport(logits, softmax_positive(logits), res.seconds,
                                         runner.channel.bytes_sent + runner.channel.bytes_received - b0, res.rounds))
    dealer.check_used_up()
    link.send(Envelope(type=MessageType.SMPC_DONE, job=session, body={"session": session}))
    report.seconds = time.perf_counter() - t_start
    report.view = runner.channel.view
    return report
