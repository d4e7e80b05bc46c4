"""Fuzz targets: each takes one input (bytes) and says what counts as a crash.

A target feeds its input to one decoder the way the product meets untrusted bytes and lets
only that module's documented typed error escape (``WireError`` for the wire, ``SessionAborted``
for the SMPC links, ``ConfigError`` for files, ``DataError`` for DICOM). Any other exception is a
finding. Multi-frame inputs are length-prefixed: ``[u32 little-endian length][frame bytes]...``
(a truncated prefix makes the rest one last frame), see :func:`frames_of` / :func:`pack_frames`.

The seeds of every target are real valid messages made by the product's own encoders
(:mod:`benchmarks.fuzz.seeds`).
"""

from __future__ import annotations

import os
import pathlib
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

_LEN = struct.Struct("<I")
MAX_BYTES = 64 << 20  # the application limit given to envelope.decode in the targets


class Finding(Exception):
    """An invariant of a decoder broken by an input (a round trip that changes the message)."""


def pack_frames(frames: list[bytes]) -> bytes:
    """The fuzz input holding ``frames`` (see the module docstring)."""
    return b"".join(_LEN.pack(len(f)) + bytes(f) for f in frames)


def frames_of(data: bytes) -> list[bytes]:
    """Split a fuzz input into frames (never fails; at least one frame)."""
    frames, pos = [], 0
    while pos < len(data) and len(frames) < 64:
        if pos + 4 > len(data):
            frames.append(data[pos:])
            break
        (n,) = _LEN.unpack_from(data, pos)
        frames.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return frames or [b""]


def _unpack(data: bytes) -> Any:
    """Arbitrary msgpack objects (non-string keys too) within the envelope's limits; None if not msgpack."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, max_array_len=100_000, max_map_len=10_000,
                               max_str_len=1 << 20, max_bin_len=1 << 20, max_ext_len=0)
    except Exception:
        return None


# ---- wire ------------------------------------------------------------------------------------
def envelope(data: bytes) -> None:
    """medfl.wire.envelope.decode; a decoded envelope must survive encode -> decode unchanged."""
    from medfl.errors import WireError
    from medfl.wire.envelope import decode, encode

    try:
        env = decode(frames_of(data), max_bytes=MAX_BYTES)
    except WireError:
        return
    again = decode([bytes(f) for f in encode(env)], max_bytes=MAX_BYTES)
    same = (again.type, again.job, again.round, again.seq, msgpack.packb(again.body), again.version) == \
        (env.type, env.job, env.round, env.seq, msgpack.packb(env.body), env.version)  # packed: NaN equals NaN
    if not same or list(again.tensors) != list(env.tensors) or not all(
            a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
            for a, b in zip(again.tensors.values(), env.tensors.values(), strict=True)):
        raise Finding("envelope changed in an encode/decode round trip")


def bodies(data: bytes) -> None:
    """The UPDATE, METRICS, JOB_REFUSE and report parsers of medfl.wire.bodies on any msgpack object."""
    from medfl.errors import MalformedMessage
    from medfl.wire import bodies as b

    obj = _unpack(data)
    for parse in (b.parse_update, b.parse_metrics, b.parse_refuse, b.parse_report):
        try:
            parse(obj)
        except MalformedMessage:
            pass


def hello(data: bytes) -> None:
    """medfl.wire.hello.parse_hello on any msgpack map (the envelope guarantees a map with string keys)."""
    from medfl.errors import MalformedMessage
    from medfl.wire.hello import parse_hello

    obj = _unpack(data)
    if not isinstance(obj, dict):
        return
    for known in (None, ("cnn", "resnet18")):
        try:
            parse_hello(obj, known_models=known)
        except MalformedMessage:
            pass


_SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="medfl-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _scratch(name: str, data: bytes) -> pathlib.Path:
    path = _SCRATCH / name
    path.write_bytes(data)
    return path


def invitation(data: bytes) -> None:
    """medfl.wire.invitation.read_invitation on a file holding the input."""
    from medfl.errors import ConfigError
    from medfl.wire.invitation import read_invitation

    try:
        read_invitation(_scratch("invite.medfl", data))
    except ConfigError:
        pass


# ---- secure aggregation ----------------------------------------------------------------------
def secagg(data: bytes) -> None:
    """Envelope decode, then the session and message decoders of medfl.secagg.envelopes."""
    from medfl.errors import WireError
    from medfl.secagg.envelopes import SECAGG_FROM_AGENT, SECAGG_TO_AGENT, Session, decode
    from medfl.wire.envelope import decode as decode_envelope

    try:
        env = decode_envelope(frames_of(data), max_bytes=MAX_BYTES)
        if env.type in SECAGG_FROM_AGENT | SECAGG_TO_AGENT:
            Session.of(env).scope()
        decode(env, agent="agent-1")
    except WireError:
        pass


# ---- SMPC ------------------------------------------------------------------------------------
class _OneShot:
    """A :class:`medfl.smpc.session.party.Link` that delivers one envelope (the fuzzed frame)."""

    def __init__(self, env: Any):
        self.env = env

    def send(self, env: Any) -> None:
        pass

    def recv(self, timeout_s: float) -> Any:
        env, self.env = self.env, None
        return env


_SMPC: dict[str, Any] = {}


def smpc_keys() -> dict[str, Any]:
    """Fixed X25519 keys of one session (made once per process): the dealer's and party 0's."""
    if not _SMPC:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        _SMPC["dealer"] = X25519PrivateKey.from_private_bytes(bytes(range(32)))
        _SMPC["party"] = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    return _SMPC


def smpc_frames(data: bytes) -> None:
    """An SMPC channel frame: envelope decode, the share exchange, and the relayed dealer chunk."""
    from medfl.errors import SessionAborted, WireError
    from medfl.smpc.dealer.material import Opener
    from medfl.smpc.session.party import PartyChannel, expect
    from medfl.wire.envelope import decode
    from medfl.wire.messages import MessageType

    try:
        env = decode(frames_of(data), max_bytes=MAX_BYTES)
    except WireError:
        return
    try:
        PartyChannel(party=0, session="s-1", link=_OneShot(env), timeout_s=0.0).exchange_recv((4,))
    except SessionAborted:
        pass
    keys = smpc_keys()
    opener = Opener(party_secret=keys["party"], dealer_public=keys["dealer"].public_key().public_bytes_raw(),
                    session="s-1", party=0)
    try:
        got = expect(_OneShot(env), MessageType.SMPC_MATERIAL, session="s-1", timeout_s=0.0, what="material")
        if got.body.get("party") != 0:
            return
        opener.open_message(got.body, got.tensors)
    except SessionAborted:
        pass


def material(data: bytes) -> None:
    """The dealer's material records (medfl.smpc.dealer.material.unpack_items) and plans (plan_from_wire)."""
    from medfl.errors import MalformedMessage
    from medfl.smpc.dealer.material import plan_from_wire, unpack_items

    try:
        unpack_items(data)
    except MalformedMessage:
        pass
    try:
        plan_from_wire(_unpack(data))
    except MalformedMessage:
        pass


# ---- files -----------------------------------------------------------------------------------
def toml_config(data: bytes) -> None:
    """agent.toml, coordinator.toml and job.toml loading on a file holding the input."""
    from agent.config import load_config as load_agent
    from coordinator.config import load_config as load_coordinator
    from medfl.errors import ConfigError
    from medfl.jobspec import load_job

    path = _scratch("config.toml", data)
    for load in (load_agent, load_coordinator, load_job):
        try:
            load(path)
        except ConfigError:
            pass


def dicom(data: bytes) -> None:
    """The PACS intake path: read_instance, check_dataset (must never raise), then preprocess.

    ``preprocess`` may raise anything: the agent's worker quarantines what it cannot decode,
    so there only a hang, a memory blow-up or a crash of a native decoder is a finding.
    """
    from agent.pacs.inbox import uid_hash
    from agent.pacs.scoring import check_dataset, preprocess, read_instance
    from medfl.errors import DataError

    try:
        ds, uid, _ = read_instance(data)
    except DataError:
        return
    uid_hash(uid)
    if check_dataset(ds) is None:
        try:
            preprocess(ds, 32)
        except Exception:  # quarantined by the worker (agent/pacs/service.py)
            pass


@dataclass(frozen=True)
class Target:
    """A fuzz target: its name, the function one input goes to, and what it covers."""

    name: str
    run: Callable[[bytes], None]
    covers: str


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("envelope", envelope, "medfl.wire.envelope.decode (+ round trip)"),
    Target("bodies", bodies, "medfl.wire.bodies.parse_*"),
    Target("hello", hello, "medfl.wire.hello.parse_hello"),
    Target("invitation", invitation, "medfl.wire.invitation.read_invitation"),
    Target("secagg", secagg, "medfl.secagg.envelopes.decode"),
    Target("smpc_frames", smpc_frames, "PartyChannel.exchange_recv, Opener.open_message"),
    Target("material", material, "medfl.smpc.dealer.material.unpack_items, plan_from_wire"),
    Target("toml_config", toml_config, "agent.toml, coordinator.toml, job.toml loading"),
    Target("dicom", dicom, "agent.pacs.scoring.read_instance, check_dataset, preprocess"),
)}

#: the packages atheris instruments for coverage
INSTRUMENTED = ("medfl", "agent", "coordinator", "msgpack", "tomllib", "pydicom")

