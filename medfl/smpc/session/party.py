"""One compute party in its own process: a transport-backed channel, a replaying dealer, the run.

The in-process engine (:mod:`medfl.smpc.evaluator`) computes both parties' shares side by side.
A networked party runs the very same code with only its own slot real: the other party's
slot holds zeros that never leave the process and never influence its own slot (every
local step of the protocols acts on each slot separately, and openings go through
:class:`PartyChannel`, which sends this party's slot and adds the peer's). Weights are the
model server's share (the data owner's is zero), the image is the data owner's share (the
model server's is zero), and only the data owner reconstructs the logits.

The dealer's items arrive before the online phase (sealed to this party, see
:mod:`medfl.smpc.dealer.material`); :class:`ReplayDealer` hands them out in order and aborts on any
request that does not match the next item's kind and shape.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Ryffel et al., "AriaNN", PoPETs 2022.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch import nn

from medfl.errors import SessionAborted
from medfl.smpc import ring
from medfl.smpc.dealer import MatmulTriple, PlanEntry, TruncPair
from medfl.smpc.dealer.material import dcf_of
from medfl.smpc.engine import Session
from medfl.smpc.evaluator import Calibration, SecureModel
from medfl.smpc.fss import DcfKey, ReluKeys
from medfl.smpc.ring import Shared
from medfl.wire.envelope import Envelope
from medfl.wire.messages import MessageType

__all__ = ["ImageResult", "Link", "PartyChannel", "PartyRunner", "PlanRecorder", "ReplayDealer", "describe",
           "expect", "trace_plan"]


class Link(Protocol):
    """Sends to and receives from the other compute party (ZeroMQ on either side)."""

    def send(self, env: Envelope) -> None:
        """Send one envelope to the peer party."""
        ...

    def recv(self, timeout_s: float) -> Envelope | None:
        """The next envelope from the peer party in this session, or None on timeout."""
        ...


def _slot(party: int, own: np.ndarray) -> Shared:
    other = np.zeros(own.shape, np.uint64)
    return Shared(own, other) if party == 0 else Shared(other, own)


class PartyChannel:
    """A :class:`~medfl.smpc.engine.channel.Channel` whose ``open`` exchanges this party's slot over a link.

    Attributes
    ----------
    bytes_sent : int
        Share bytes this party sent.
    rounds : int
        Openings so far.
    view : list of bytes, optional
        Every share received, when ``record`` is true (privacy tests).

    References
    ----------
    .. [1] Beaver, CRYPTO 1991 (opening masked values).
    """

    def __init__(self, *, party: int, session: str, link: Link, timeout_s: float, record: bool = False):
        self.party, self.session, self.link, self.timeout_s = party, session, link, timeout_s
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rounds = 0
        self.view: list[bytes] | None = [] if record else None

    def open(self, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
        """Send this party's slot, receive the peer's, return their sum (one round)."""
        mine = np.ascontiguousarray(s0 if self.party == 0 else s1)
        self.exchange_send(mine)
        other = self.exchange_recv(mine.shape)
        return mine + other

    def exchange_send(self, mine: np.ndarray) -> None:
        """Send one share (one half of a round)."""
        self.link.send(Envelope(type=MessageType.SMPC_SHARE, job=self.session, round=self.rounds,
                                body={"session": self.session, "step": self.rounds}, tensors={"s": mine}))
        self.bytes_sent += mine.nbytes

    def exchange_recv(self, shape: tuple[int, ...]) -> np.ndarray:
        """Receive the peer's share of the current round and check session, step and shape."""
        env = expect(self.link, MessageType.SMPC_SHARE, session=self.session, timeout_s=self.timeout_s,
                     what=f"the peer's share of round {self.rounds}")
        step = env.body.get("step")
        if step != self.rounds:
            raise SessionAborted(f"share for round {step} while at round {self.rounds}: replayed or reordered",
                                 code="replay")
        got = env.tensors.get("s")
        if got is None or got.dtype != np.uint64 or got.shape != shape:
            raise SessionAborted(f"peer share of round {step} has {None if got is None else (got.dtype, got.shape)}"
                                 f", expected uint64{shape}", code="plan")
        self.rounds += 1
        self.bytes_received += got.nbytes
        if self.view is not None:
            self.view.append(got.tobytes())
        return got


def expect(link: Link, mtype: MessageType, *, session: str, timeout_s: float, what: str) -> Envelope:
    """Receive the next message of ``session``; abort on timeout, a peer abort or a foreign session.

    Raises
    ------
    SessionAborted
        ``timeout`` (peer gone), ``peer`` (it aborted, with its reason), ``foreign_session``, ``plan``.
    """
    env = link.recv(timeout_s)
    if env is None:
        raise SessionAborted(f"no {what} within {timeout_s:g} s: the other party disappeared; session "
                             f"{session} aborted", code="timeout")
    if env.type == MessageType.SMPC_ABORT:
        raise SessionAborted(f"the other party aborted session {session}: {env.body.get('message')}",
                             code="peer")
    got = env.body.get("session")
    if got != session:
        raise SessionAborted(f"message for session {str(got)[:40]!r} arrived in session {session!r}",
                             code="foreign_session")
    if env.type != mtype:
        raise SessionAborted(f"expected {mtype} ({what}), got {env.type}", code="plan")
    return env


class ReplayDealer:
    """Hands out this party's sealed-and-opened dealer items in plan order.

    Parameters
    ----------
    party : int
        0 (data owner) or 1 (model server).
    items : sequence of (index, kind, arrays)
        This party's items, as :func:`medfl.smpc.dealer.material.unpack_items` returns them.

    References
    ----------
    .. [1] Beaver, CRYPTO 1991.
    """

    def __init__(self, party: int, items: Sequence[tuple[int, str, dict[str, np.ndarray]]]):
        self.party = party
        self.items = list(items)
        self.next = 0
        self._mask_index: dict[int, int] = {}

    def _take(self, kind: str, shape: tuple[int, ...], key: str, *same: str) -> dict[str, np.ndarray]:
        """The next item, checked: its kind, and ``key`` and every name in ``same`` a uint64 ring array of ``shape``.

        Material of the wrong size or type aborts the session before any of it is used (a
        dealer's item is never trusted to fit the plan because its first array does).
        """
        if self.next >= len(self.items):
            raise SessionAborted(f"protocol asks for {kind}{shape} after the dealer's {len(self.items)} items",
                                 code="plan")
        index, got, arrays = self.items[self.next]
        first = arrays.get(key)
        if index != self.next or got != kind or first is None or tuple(first.shape) != shape:
            seen = tuple(next(iter(arrays.values())).shape) if arrays else ()
            raise SessionAborted(f"dealer item {self.next} is {got}{seen} but the protocol asks "
                                 f"for {kind}{shape}; the announced model and the plan disagree", code="plan")
        for name in (key, *same):
            a = arrays.get(name)
            if a is None or tuple(a.shape) != shape or a.dtype != np.uint64:
                what = "missing" if a is None else f"{a.dtype}{tuple(a.shape)}"
                raise SessionAborted(f"dealer item {self.next} ({kind}) has {name!r} {what}; the protocol needs "
                                     f"uint64{shape}: material of the wrong size is refused", code="plan")
        self.next += 1
        return arrays

    def weight_mask(self, shape: tuple[int, int]) -> Shared:
        """See :class:`medfl.smpc.dealer.Dealer`."""
        b = _slot(self.party, self._take("weight_mask", tuple(shape), "b")["b"])
        self._mask_index[id(b)] = self.next - 1
        return b

    def matmul_triple(self, m: int, b: Shared) -> MatmulTriple:
        """See :class:`medfl.smpc.dealer.Dealer`."""
        if id(b) not in self._mask_index:
            raise SessionAborted("matrix triple asked for a weight mask this dealer did not hand out", code="plan")
        k, n = b.s0.shape
        arr = self._take("matmul_triple", (m, k), "a")
        c = arr.get("c")
        if c is None or c.shape != (m, n) or c.dtype != np.uint64:
            raise SessionAborted(f"matrix triple C is {'missing' if c is None else f'{c.dtype}{c.shape}'}, expected "
                                 f"uint64{(m, n)}", code="plan")
        return MatmulTriple(_slot(self.party, arr["a"]), b, _slot(self.party, arr["c"]))

    def trunc_pair(self, shape: tuple[int, ...], frac_bits: int) -> TruncPair:
        """See :class:`medfl.smpc.dealer.Dealer`."""
        arr = self._take("trunc_pair", tuple(shape), "r", "low", "msb")
        return TruncPair(_slot(self.party, arr["r"]), _slot(self.party, arr["low"]), _slot(self.party, arr["msb"]),
                         frac_bits)

    def relu_keys(self, n: int, *, bits: int = 64) -> ReluKeys:
        """See :class:`medfl.smpc.dealer.Dealer`; the absent party's DCF key has zero seeds."""
        arr = self._take("relu_keys", (n,), "r", "msb", "rmsb")
        own = dcf_of(arr)
        if own.seed.shape != (n, 2) or own.s_cw.shape[:2] != (n, bits - 1):
            raise SessionAborted(f"ReLU keys of {own.s_cw.shape[1]} levels for {own.seed.shape[0]} comparisons; the "
                                 f"protocol asks for {bits - 1} levels and {n}", code="plan")
        blank = DcfKey(np.zeros_like(own.seed), own.s_cw, own.v_cw, own.t_cw, own.final)
        return ReluKeys(_slot(self.party, arr["r"]), _slot(self.party, arr["msb"]), _slot(self.party, arr["rmsb"]),
                        (own, blank) if self.party == 0 else (blank, own))

    def mul_triple(self, shape: tuple[int, ...]) -> tuple[Shared, Shared, Shared]:
        """See :class:`medfl.smpc.dealer.Dealer`."""
        arr = self._take("mul_triple", tuple(shape), "a", "b", "c")
        return _slot(self.party, arr["a"]), _slot(self.party, arr["b"]), _slot(self.party, arr["c"])

    def check_used_up(self) -> None:
        """Abort if items are left over (the plan and the protocol disagree)."""
        if self.next != len(self.items):
            raise SessionAborted(f"the protocol used {self.next} of the dealer's {len(self.items)} items",
                                 code="plan")


class PlanRecorder:
    """A dealer that records what the protocol asks for and returns zero material (plan tracing)."""

    def __init__(self) -> None:
        """Start with an empty plan."""
        self.plan: list[PlanEntry] = []
        self._masks: dict[int, int] = {}

    def _z(self, shape: tuple[int, ...]) -> Shared:
        return Shared(np.zeros(shape, np.uint64), np.zeros(shape, np.uint64))

    def weight_mask(self, shape: tuple[int, int]) -> Shared:
        """Record a weight mask."""
        b = self._z(tuple(shape))
        self._masks[id(b)] = len(self.plan)
        self.plan.append(PlanEntry("weight_mask", tuple(shape)))
        return b

    def matmul_triple(self, m: int, b: Shared) -> MatmulTriple:
        """Record a matrix triple for mask ``b``."""
        k, n = b.s0.shape
        self.plan.append(PlanEntry("matmul_triple", (m,), self._masks[id(b)]))
        return MatmulTriple(self._z((m, k)), b, self._z((m, n)))

    def trunc_pair(self, shape: tuple[int, ...], frac_bits: int) -> TruncPair:
        """Record a truncation pair."""
        self.plan.append(PlanEntry("trunc_pair", tuple(shape), frac_bits))
        return TruncPair(self._z(shape), self._z(shape), self._z(shape), frac_bits)

    def relu_keys(self, n: int, *, bits: int = 64) -> ReluKeys:
        """Record ReLU keys (the planned comparison range goes into the plan)."""
        self.plan.append(PlanEntry("relu_keys", (n,), bits))
        lv = bits - 1
        key = DcfKey(np.zeros((n, 2), np.uint64), np.zeros((n, lv, 2), np.uint64), np.zeros((n, lv, 2), np.uint64),
                     np.zeros((n, lv, 2), np.uint8), np.zeros((n, 2), np.uint64))
        z = self._z((n,))
        return ReluKeys(z, z, z, (key, key))

    def mul_triple(self, shape: tuple[int, ...]) -> tuple[Shared, Shared, Shared]:
        """Record an element-wise triple."""
        self.plan.append(PlanEntry("mul_triple", tuple(shape)))
        return self._z(shape), self._z(shape), self._z(shape)


class _ZeroChannel:
    rounds = 0

    def open(self, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
        self.rounds += 1
        return np.zeros(s0.shape, np.uint64)


def trace_plan(model: nn.Module, in_shape: tuple[int, int, int], calibration: Calibration | None,
               frac_bits: int = ring.FRAC_BITS) -> tuple[list[PlanEntry], int]:
    """The dealer items of one session (weights prepared, one image) and its rounds, by a zero run.

    The run computes on zeros only; what it records depends on the architecture, the shapes and
    the calibration's variance ranges (Newton step counts), never on weights or images.
    """
    rec, ch = PlanRecorder(), _ZeroChannel()
    sm = SecureModel(model, Session(rec, ch, frac_bits), in_shape, calibration,
                     param_share=lambda v: _slot(1, np.zeros(v.shape, np.uint64)))
    sm.forward(_slot(0, np.zeros(in_shape, np.uint64)))
    return rec.plan, ch.rounds + 1


@dataclass(frozen=True)
class ImageResult:
    """One image of a session as one party saw it."""

    logits: np.ndarray | None
    seconds: float
    bytes_sent: int
    rounds: int


class PartyRunner:
    """One party of one session: weight masks opened at construction, then any number of images.

    Parameters
    ----------
    party : int
        0: data owner (``model`` is the announced architecture, its weights unused);
        1: model server (``model`` holds the weights).
    model, in_shape, calibration
        The announced model.
    dealer : ReplayDealer
        This party's material for the whole session.
    session : str
        The session id.
    link : Link
        To the other party.
    timeout_s : float
        Silence after which the session aborts.
    record : bool
        Keep every share received (privacy tests).

    References
    ----------
    .. [1] Ryffel et al., "AriaNN", PoPETs 2022.
    """

    def __init__(self, *, party: int, model: nn.Module, in_shape: tuple[int, int, int],
                 calibration: Calibration | None, dealer: ReplayDealer, session: str, link: Link, timeout_s: float,
                 frac_bits: int = ring.FRAC_BITS, record: bool = False):
        if party not in (0, 1):
            raise ValueError(f"party must be 0 or 1, got {party}")
        self.party, self.in_shape, self.frac_bits, self.dealer = party, in_shape, frac_bits, dealer
        self.channel = PartyChannel(party=party, session=session, link=link, timeout_s=timeout_s, record=record)
        t0 = time.perf_counter()

        def share_param(v: np.ndarray) -> Shared:
            return _slot(party, v if party == 1 else np.zeros(v.shape, np.uint64))

        self.model = SecureModel(model, Session(dealer, self.channel, frac_bits), in_shape, calibration,
                                 param_share=share_param)
        self.prepare_seconds = time.perf_counter() - t0
        self.prepare_bytes = self.channel.bytes_sent
        self.prepare_rounds = self.channel.rounds

    def infer(self, image: np.ndarray | None) -> ImageResult:
        """Evaluate one image: the data owner passes it and gets the logits; the model server passes None."""
        t0, b0, r0 = time.perf_counter(), self.channel.bytes_sent, self.channel.rounds
        if self.party == 0:
            if image is None:
                raise ValueError("the data owner (party 0) must pass the image")
            x = _slot(0, self.model.check_input(np.asarray(image, np.float32)))
        else:
            x = _slot(1, np.zeros(self.in_shape, np.uint64))
        out = self.model.forward(x)
        logits = None
        if self.party == 1:
            self.channel.exchange_send(np.ascontiguousarray(out.s1))
            self.channel.rounds += 1
        else:
            other = self.channel.exchange_recv(out.s0.shape)
            logits = ring.decode(out.s0 + other, frac_bits=self.frac_bits).reshape(-1)
        return ImageResult(logits, time.perf_counter() - t0, self.channel.bytes_sent - b0, self.channel.rounds - r0)


def describe(model_name: str, kwargs: dict[str, Any], in_shape: Sequence[int], calibration: Calibration | None,
             frac_bits: int) -> dict[str, Any]:
    """The announcement of a served model: registry name, arguments, shapes, ranges (data only)."""
    cal = None if calibration is None else {
        "input_bound": calibration.input_bound, "variances": [list(v) for v in calibration.variances],
        "act_bounds": None if calibration.act_bounds is None else list(calibration.act_bounds)}
    return {"model": model_name, "kwargs": dict(kwargs), "in_shape": list(in_shape), "frac_bits": frac_bits,
            "calibration": cal}
