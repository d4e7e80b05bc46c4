"""Dealer material on the wire: the plan of a session, one party's items, and their AEAD sealing.

A *plan* lists, in the order the protocol asks for them, the correlated-randomness items of
one inference (weight masks, matrix triples, truncation pairs, ReLU keys, element-wise
triples) by kind and shape only; the model server derives it from the announced architecture
(:func:`trace_plan`) and the dealer fills it (:func:`generate`). Each party's half is a byte
stream of records (:func:`pack_items`) cut into chunks, each sealed to that party alone
(:class:`Sealer` / :class:`Opener`): X25519 between the dealer's static key and the party's
ephemeral session key, HKDF-SHA256 bound to the session id and party, ChaCha20-Poly1305 with
the chunk's sequence number as nonce and ``(session, party, seq, last)`` as associated data.
A relaying party therefore can neither read, alter, reorder, replay nor move a chunk to
another session without the receiver's :class:`Opener` refusing it.

Compatibility: plan entries are ``{"k": kind, "s": shape, "x": extra}``; kinds are never
renamed; a record's header is ``{"i": index, "k": kind, "t": [[name, dtype, shape], ...]}``.

References
----------
.. [1] Langley, Hamburg and Turner, "Elliptic Curves for Security", RFC 7748 (X25519).
.. [2] Krawczyk and Eronen, "HMAC-based Extract-and-Expand Key Derivation Function", RFC 5869.
.. [3] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439.
.. [4] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medfl.errors import MalformedMessage, SessionAborted
from medfl.smpc.fss import DcfKey, ReluKeys
from medfl.smpc.ring import Shared

__all__ = ["KINDS", "MAX_PLAN_ELEMENTS", "Opener", "PlanEntry", "Sealer", "generate", "pack_items",
           "plan_from_wire", "plan_to_wire", "unpack_items"]

KINDS = ("weight_mask", "matmul_triple", "trunc_pair", "relu_keys", "mul_triple")
MAX_PLAN_ELEMENTS = 2**31
"""Bound on the ring elements one plan may ask for (a dealer refuses larger plans)."""

_INFO = b"medfl smpc dealer material v1"
_DTYPES: dict[str, np.dtype] = {"uint64": np.dtype("<u8"), "uint8": np.dtype("u1")}
_REC = struct.Struct("<I")


@dataclass(frozen=True)
class PlanEntry:
    """One item of a plan: its kind, its shape and one extra integer.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    shape : tuple of int
        Weight-mask (k, n); matrix-triple (m,); truncation/element-wise shape; ReLU (n,).
    extra : int
        Truncation: fractional bits; matrix triple: index of its weight mask in the plan; ReLU keys:
        the planned comparison range in bits (2..64); else 0.
    """

    kind: str
    shape: tuple[int, ...]
    extra: int = 0


def plan_to_wire(plan: Sequence[PlanEntry]) -> list[dict[str, Any]]:
    """The plan as msgpack-able entries."""
    return [{"k": e.kind, "s": list(e.shape), "x": e.extra} for e in plan]


def plan_from_wire(raw: Any) -> list[PlanEntry]:
    """Parse and check a plan received from the wire.

    Raises
    ------
    MalformedMessage
        An unknown kind, a bad shape, a dangling weight-mask reference, or a plan above
        :data:`MAX_PLAN_ELEMENTS`.
    """
    if not isinstance(raw, list) or len(raw) > 1_000_000:
        raise MalformedMessage("plan must be a list of at most 10^6 entries")
    plan: list[PlanEntry] = []
    total = 0
    for i, e in enumerate(raw):
        if not isinstance(e, dict) or e.get("k") not in KINDS or not isinstance(e.get("s"), list):
            raise MalformedMessage(f"plan entry {i} is not {{k: kind, s: shape, x: int}} with a known kind")
        shape = e["s"]
        extra = e.get("x", 0)
        if (not 1 <= len(shape) <= 4 or not all(isinstance(d, int) and 0 < d < 2**31 for d in shape)
                or not isinstance(extra, int)):
            raise MalformedMessage(f"plan entry {i} has a bad shape {shape!r} or extra {extra!r}")
        if e["k"] == "matmul_triple" and not (0 <= extra < i and plan[extra].kind == "weight_mask"):
            raise MalformedMessage(f"plan entry {i}: matrix triple refers to entry {extra}, not an earlier weight mask")
        if e["k"] == "trunc_pair" and not 1 <= extra < 62:
            raise MalformedMessage(f"plan entry {i}: truncation by {extra} bits")
        if e["k"] == "relu_keys" and not 2 <= extra <= 64:
            raise MalformedMessage(f"plan entry {i}: comparison range of {extra} bits (2..64)")
        total += math.prod(shape)
        plan.append(PlanEntry(e["k"], tuple(shape), extra))
    if total > MAX_PLAN_ELEMENTS:
        raise MalformedMessage(f"plan asks for {total} elements, more than the limit {MAX_PLAN_ELEMENTS}")
    return plan


def _party_arrays(kind: str, item: Any, p: int) -> dict[str, np.ndarray]:
    if kind == "weight_mask":
        return {"b": item.of(p)}
    if kind == "matmul_triple":
        return {"a": item.a.of(p), "c": item.c.of(p)}
    if kind == "trunc_pair":
        return {"r": item.r.of(p), "low": item.r_low_shifted.of(p), "msb": item.r_msb.of(p)}
    if kind == "mul_triple":
        return {"a": item[0].of(p), "b": item[1].of(p), "c": item[2].of(p)}
    k: ReluKeys = item
    key = k.dcf[p]
    return {"r": k.r.of(p), "msb": k.r_msb.of(p), "rmsb": k.r_r_msb.of(p), "seed": key.seed, "scw": key.s_cw,
            "vcw": key.v_cw, "tcw": key.t_cw, "fin": key.final}


def generate(plan: Sequence[PlanEntry], dealer: Any) -> Iterator[tuple[int, str, dict[str, np.ndarray],
                                                                       dict[str, np.ndarray]]]:
    """Fill a plan with a :class:`~medfl.smpc.dealer.LocalDealer`: yield (index, kind, party 0, party 1).

    References
    ----------
    .. [1] Beaver, CRYPTO 1991.
    """
    masks: dict[int, Shared] = {}
    for i, e in enumerate(plan):
        if e.kind == "weight_mask":
            item: Any = dealer.weight_mask((e.shape[0], e.shape[1]))
            masks[i] = item
        elif e.kind == "matmul_triple":
            item = dealer.matmul_triple(e.shape[0], masks[e.extra])
        elif e.kind == "trunc_pair":
            item = dealer.trunc_pair(e.shape, e.extra)
        elif e.kind == "relu_keys":
            item = dealer.relu_keys(e.shape[0], bits=e.extra)
        else:
            item = dealer.mul_triple(e.shape)
        yield i, e.kind, _party_arrays(e.kind, item, 0), _party_arrays(e.kind, item, 1)


def pack_items(items: Sequence[tuple[int, str, dict[str, np.ndarray]]]) -> bytes:
    """Serialise one party's items as records ``[u32 header length][msgpack header][raw arrays]``."""
    parts: list[bytes] = []
    for index, kind, arrays in items:
        spec = []
        raw = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a).reshape(np.shape(a))  # a 0-d array keeps its shape
            if a.dtype.name not in _DTYPES:
                raise ValueError(f"material array {name} has dtype {a.dtype}")
            spec.append([name, a.dtype.name, list(a.shape)])
            raw.append(a.astype(_DTYPES[a.dtype.name], copy=False).tobytes())
        head = msgpack.packb({"i": index, "k": kind, "t": spec}, use_bin_type=True)
        parts += [_REC.pack(len(head)), head, *raw]
    return b"".join(parts)


def unpack_items(blob: bytes | bytearray) -> list[tuple[int, str, dict[str, np.ndarray]]]:
    """Parse :func:`pack_items` output, checking every length against the buffer.

    Raises
    ------
    MalformedMessage
        A record runs past the end or has a bad header.
    """
    view = memoryview(blob)
    out: list[tuple[int, str, dict[str, np.ndarray]]] = []
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise MalformedMessage("material record cut short")
        (hl,) = _REC.unpack_from(view, pos)
        pos += 4
        try:
            head = msgpack.unpackb(view[pos:pos + hl], raw=False)
        except Exception as exc:
            raise MalformedMessage(f"material record header does not parse: {exc}") from None
        pos += hl
        if (not isinstance(head, dict) or head.get("k") not in KINDS or not isinstance(head.get("t"), list)
                or not isinstance(head.get("i"), int) or isinstance(head["i"], bool)):
            raise MalformedMessage("material record header is not {i: int, k: kind, t: [[name, dtype, shape]...]}")
        arrays: dict[str, np.ndarray] = {}
        for spec in head["t"]:
            if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
                    and isinstance(spec[1], str) and isinstance(spec[2], list)):
                raise MalformedMessage(f"material array spec {str(spec)[:60]!r} is not [name, dtype, shape]")
            name, dname, shape = spec
            dt = _DTYPES.get(dname)
            if dt is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise MalformedMessage(f"material array {name[:40]!r} has dtype {dname[:20]!r} / shape "
                                       f"{str(shape)[:60]}")
            n = math.prod(shape) * dt.itemsize
            if pos + n > len(view):
                raise MalformedMessage(f"material array {name!r} runs past the end of the stream")
            arrays[str(name)] = np.frombuffer(view[pos:pos + n], dtype=dt).reshape(shape)
            pos += n
        out.append((int(head["i"]), str(head["k"]), arrays))
    return out


def _key(shared_secret: bytes, session: str, party: int, dealer_pub: bytes, party_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=session.encode(),
                info=_INFO + bytes([party]) + dealer_pub + party_pub)
    return hkdf.derive(shared_secret)


def _nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + seq.to_bytes(8, "big")


def _aad(session: str, party: int, seq: int, last: bool) -> bytes:
    return msgpack.packb([session, party, seq, last], use_bin_type=True)


class Sealer:
    """The dealer's side: seal chunks for one party of one session.

    Parameters
    ----------
    dealer_secret : bytes
        The dealer's static X25519 secret key (32 raw bytes; its CURVE secret key).
    party_public : bytes
        The party's ephemeral X25519 public key for this session (32 raw bytes).
    session : str
        The session id.
    party : int
        0 (data owner) or 1 (model server).

    References
    ----------
    .. [1] RFC 7748, RFC 5869, RFC 8439.
    """

    def __init__(self, *, dealer_secret: bytes, party_public: bytes, session: str, party: int):
        sk = X25519PrivateKey.from_private_bytes(dealer_secret)
        pk = X25519PublicKey.from_public_bytes(party_public)
        dealer_pub = sk.public_key().public_bytes_raw()
        self._aead = ChaCha20Poly1305(_key(sk.exchange(pk), session, party, dealer_pub, party_public))
        self.session, self.party, self.seq = session, party, 0

    def seal(self, chunk: bytes, *, last: bool) -> tuple[int, bytes]:
        """Return (seq, ciphertext) of the next chunk."""
        seq = self.seq
        self.seq += 1
        return seq, self._aead.encrypt(_nonce(seq), chunk, _aad(self.session, self.party, seq, last))


class Opener:
    """A party's side: open the dealer's chunks for this party and session, strictly in order.

    Parameters
    ----------
    party_secret : X25519PrivateKey
        The party's ephemeral key of this session.
    dealer_public : bytes
        The dealer's static public key (32 raw bytes), pinned by the party.
    session : str
        The session id this party opened.
    party : int
        0 or 1.

    References
    ----------
    .. [1] RFC 7748, RFC 5869, RFC 8439.
    """

    def __init__(self, *, party_secret: X25519PrivateKey, dealer_public: bytes, session: str, party: int):
        party_pub = party_secret.public_key().public_bytes_raw()
        shared = party_secret.exchange(X25519PublicKey.from_public_bytes(dealer_public))
        self._aead = ChaCha20Poly1305(_key(shared, session, party, dealer_public, party_pub))
        self.session, self.party, self.next_seq, self.done = session, party, 0, False

    def open(self, *, session: str, seq: int, last: bool, ciphertext: bytes) -> bytes:
        """Authenticate and decrypt one chunk.

        Raises
        ------
        SessionAborted
            ``foreign_session``: the chunk names another session; ``replay``: a sequence number
            other than the next one (replayed, dropped or reordered), or a chunk after the last;
            ``auth``: the tag does not verify (tampered, or sealed for another party/key).
        """
        if session != self.session:
            raise SessionAborted(f"dealer material for session {session[:40]!r} arrived in session "
                                 f"{self.session!r}; refusing it", code="foreign_session")
        if self.done or seq != self.next_seq:
            raise SessionAborted(f"dealer chunk seq {seq} when {self.next_seq} was expected"
                                 + (" (after the last chunk)" if self.done else "")
                                 + ": missing, replayed or reordered material", code="replay")
        try:
            plain = self._aead.decrypt(_nonce(seq), ciphertext, _aad(session, self.party, seq, last))
        except InvalidTag:
            raise SessionAborted(f"dealer chunk {seq} of session {session!r} failed authentication "
                                 "(tampered in transit, or not sealed for this party by the pinned dealer)",
                                 code="auth") from None
        self.next_seq += 1
        self.done = last
        return plain

    def open_message(self, body: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
        """Check the fields of one relayed SMPC_MATERIAL message, then :meth:`open` its chunk.

        The message passed through the other party, so its fields are checked before use:
        ``session`` a string, ``seq`` an integer >= 0, ``last`` a bool (absent: false), and one
        uint8 vector ``c``, the ciphertext.

        Raises
        ------
        SessionAborted
            ``plan``: a field is missing or of the wrong type; otherwise as :meth:`open`.
        """
        session, seq, last, ct = body.get("session"), body.get("seq"), body.get("last", False), tensors.get("c")
        bad = [what for what, ok in (
            ("session (a string)", isinstance(session, str)),
            ("seq (an integer >= 0)", isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0),
            ("last (true or false)", isinstance(last, bool)),
            ("tensor c (a uint8 vector)", ct is not None and ct.dtype == np.uint8 and ct.ndim == 1)) if not ok]
        if bad or not isinstance(session, str) or not isinstance(seq, int) or ct is None:
            raise SessionAborted(f"dealer material message with a bad {', '.join(bad)}: not what the dealer "
                                 "sends; the relaying party altered it", code="plan")
        return self.open(session=session, seq=seq, last=bool(last), ciphertext=ct.tobytes())


def dcf_of(arrays: dict[str, np.ndarray]) -> DcfKey:
    """Rebuild one party's :class:`DcfKey` from its record arrays."""
    return DcfKey(arrays["seed"], arrays["scw"], arrays["vcw"], arrays["tcw"], arrays["fin"])
