"""The envelope: a msgpack header plus the raw bytes of each tensor in frames (zero-copy sending).

Frame 0 is a msgpack map ``{v, type, job, round, seq, body, tensors}`` where ``tensors`` lists
``[name, dtype, shape]`` for each tensor, in the order of the frames that follow. A tensor of
more than :data:`FRAME_BYTES` bytes (protocol version 2) is cut into consecutive frames of
``FRAME_BYTES`` (the last one shorter) and its spec is ``[name, dtype, shape, parts]``.

Why frames of at most 16 MiB: under CurveZMQ every frame is encrypted into, and decrypted from,
a buffer of its own size that libzmq allocates. glibc serves allocations above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` each time. A 45 MB frame (one ResNet-18 sized masked
upload) therefore cost fresh buffers that the kernel faulted in page by page and zeroed: about
11,000 page faults and 27 ms of CPU per buffer on our 2-core machine. Frames of 16 MiB reuse heap
memory. In the 10-agent secure round this cut the round's CPU seconds and wall time by about a
fifth (interleaved A/B runs, docs/DECISIONS.md). Model tensors stay below the size and keep
their zero-copy single frame: with 4 MiB frames, plain FedAvg paid copies to reassemble them
and gained nothing.

Decoding never trusts the peer: every field is type-checked, sizes are bounded before anything
is allocated, the header is checked whole (type, job, round, tensor specs, their declared sizes
against the frames that follow, frame count and sum) before any tensor is built, and an
``admit`` callback may refuse the message from its header alone (the coordinator refuses an
UPDATE for a job that is not running without decoding or pooling its tensors). Every failure
is a :class:`~medfl.errors.WireError` subclass whose ``code`` goes back in the ERROR reply. A
tensor in one frame is a read-only view of the frame; one in several frames is copied once into
an array of its own (also marked read-only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from medfl.buffers import VectorPool
from medfl.errors import MalformedMessage, MessageTooLarge, OutOfOrder, UnsupportedVersion
from medfl.wire.messages import PROTOCOL_VERSION, SUPPORTED_VERSIONS, MessageType

__all__ = ["DTYPES", "FRAME_BYTES", "Envelope", "SequenceGuard", "decode", "encode"]

#: dtypes allowed in tensor frames (always little-endian on the wire)
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
          ("float32", "float64", "int32", "int64", "uint8", "uint32", "uint64")}
_HEADER_LIMIT = 1 << 20          # bytes of msgpack header
_MAX_TENSORS = 4096
_MAX_FRAMES = 1 << 16            # frames after the header (tensors and their parts)
_JOINED = VectorPool(keep=4, max_bytes=512 << 20)  # memory of tensors joined from parts (medfl.buffers)
#: largest frame a tensor is sent in (protocol version 2); larger tensors take several frames
FRAME_BYTES = 16 << 20  # below glibc's largest mmap threshold (32 MiB), above ResNet-18's largest tensor (9.4 MB)
_MAX_DIMS = 8
_MAX_ELEMENTS = 2**40            # bound on a tensor's element count, even an empty one's
_MAX_DEPTH = 32                  # nesting of lists/maps inside the header
_PLAIN = (type(None), bool, int, float, str, bytes)


@dataclass(frozen=True)
class Envelope:
    """One protocol message.

    Parameters
    ----------
    type : MessageType
        What the message is.
    job, round : optional
        The job id and round number it belongs to.
    seq : int
        Sender's sequence number (assigned by the channel on send).
    body : mapping
        Small msgpack-able metadata.
    tensors : mapping of str to ndarray
        Arrays sent as raw frames, in order.
    version : int
        Protocol version.

    Notes
    -----
    Values crossing the wire: fields are never removed, new fields are optional and their
    absence keeps the old meaning (see :mod:`medfl.wire.messages`).

    References
    ----------
    .. [1] ZeroMQ RFC 23/ZMTP (multipart messages); MessagePack specification.
    """

    type: MessageType
    job: str | None = None
    round: int | None = None
    seq: int = 0
    body: Mapping[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION


def encode(env: Envelope) -> list[Any]:
    """Frames for ``env``: the msgpack header, then each tensor's buffer without copying.

    C-contiguous little-endian arrays are passed as memoryviews of their own memory (zero
    copy); others are copied once into that layout. A tensor of more than :data:`FRAME_BYTES`
    bytes goes out as consecutive slices of that memory (version 2 envelopes only; a version 1
    envelope keeps one frame per tensor). The caller must not modify an array until the frames
    have been sent (ZeroMQ reads large frames from the caller's memory).

    Parameters
    ----------
    env : Envelope
        The message.

    Returns
    -------
    list
        Frame 0 is the msgpack header, then each tensor's buffer (or its parts).

    Raises
    ------
    ValueError
        A tensor's dtype is not one of :data:`DTYPES`.

    References
    ----------
    .. [1] MessagePack specification, https://github.com/msgpack/msgpack/blob/master/spec.md
    """
    specs = []
    frames: list[Any] = []
    for name, arr in env.tensors.items():
        a = np.asarray(arr)
        key = a.dtype.name
        if key not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {a.dtype}; allowed: {', '.join(DTYPES)}")
        if a.dtype.byteorder == ">":
            a = a.astype(DTYPES[key])
        a = np.ascontiguousarray(a).reshape(a.shape)  # ascontiguousarray makes a 0-d array 1-d: keep its shape
        spec: list[Any] = [str(name), key, list(a.shape)]
        if not a.size:
            frames.append(b"")
        elif a.nbytes <= FRAME_BYTES or env.version < 2:
            frames.append(memoryview(a.reshape(-1)).cast("B"))  # type: ignore[arg-type]
        else:
            buf = memoryview(a.reshape(-1)).cast("B")  # type: ignore[arg-type]
            frames.extend(buf[i:i + FRAME_BYTES] for i in range(0, a.nbytes, FRAME_BYTES))
            spec.append(-(-a.nbytes // FRAME_BYTES))
        specs.append(spec)
    header = {"v": env.version, "type": str(env.type), "job": env.job, "round": env.round, "seq": env.seq,
              "body": dict(env.body), "tensors": specs}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", None)
    try:
        return memoryview(buf if buf is not None else frame).cast("B")
    except (TypeError, ValueError):
        raise MalformedMessage(f"a frame of type {type(frame).__name__} is not a byte buffer") from None


def _check_plain(obj: Any) -> None:
    """Reject anything but nil/bool/int/float/str/bin/array/map (str keys), nested at most _MAX_DEPTH."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise MalformedMessage(f"header nests deeper than {_MAX_DEPTH} levels")
        if isinstance(item, list):
            stack.extend((x, depth + 1) for x in item)
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise MalformedMessage(f"header map key of type {type(k).__name__}; keys must be strings")
                stack.append((v, depth + 1))
        elif not isinstance(item, _PLAIN):
            raise MalformedMessage(f"header holds a {type(item).__name__}; extension types are not allowed")


#: called with the header-only envelope (no tensors) and the tensor bytes it declares; raises to refuse
Admit = Callable[["Envelope", int], None]


def decode(frames: Sequence[Any], *, max_bytes: int, admit: Admit | None = None) -> Envelope:
    """Parse frames from the wire into an :class:`Envelope`, or raise a WireError.

    Tensors are read-only views of the frames' memory (no copy). Nothing but a
    :class:`~medfl.errors.WireError` subclass is ever raised, whatever the bytes.

    Parameters
    ----------
    frames : sequence of bytes or zmq.Frame
        The multipart message (without the ROUTER identity).
    max_bytes : int
        Largest total size accepted (application limit).
    admit : callable(Envelope, int), optional
        Called once the header is valid and matches the frames, before any tensor is built, with
        the envelope without its tensors and the tensor bytes declared; it refuses the message by
        raising a WireError (which propagates).

    Returns
    -------
    Envelope
        The parsed message.

    Raises
    ------
    MessageTooLarge
        The frames add up to more than ``max_bytes``.
    UnsupportedVersion
        The header's ``v`` is not a version this side speaks.
    MalformedMessage
        Anything else that is not a well-formed envelope.

    References
    ----------
    .. [1] MessagePack specification, https://github.com/msgpack/msgpack/blob/master/spec.md
    """
    if not frames:
        raise MalformedMessage("empty message")
    if len(frames) > _MAX_FRAMES + 1:
        raise MalformedMessage(f"message has {len(frames)} frames; at most {_MAX_FRAMES + 1} are allowed")
    views = [_buffer(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise MessageTooLarge(f"message of {total} bytes exceeds this socket's limit of {max_bytes} bytes")
    if views[0].nbytes > _HEADER_LIMIT:
        raise MalformedMessage(f"header of {views[0].nbytes} bytes exceeds {_HEADER_LIMIT}")
    try:
        header = msgpack.unpackb(views[0], raw=False, strict_map_key=True,
                                 max_array_len=100_000, max_map_len=10_000, max_str_len=_HEADER_LIMIT,
                                 max_bin_len=_HEADER_LIMIT, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types on garbage
        raise MalformedMessage(f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise MalformedMessage(f"header must be a map, got {type(header).__name__}")
    _check_plain(header)
    version = header.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MalformedMessage(f"header field v must be an integer, got {version!r}"[:200])
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"protocol version {version} is not spoken here; supported: "
                                 f"{sorted(SUPPORTED_VERSIONS)}; upgrade the older side")
    return _parse_header(header, views[1:], admit)


def _field(header: dict, key: str, types: tuple[type, ...], optional: bool = False) -> Any:
    value = header.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise MalformedMessage(f"header field {key} has type {type(value).__name__}")
    return value


def _parse_header(header: dict, frames: list[memoryview], admit: Admit | None = None) -> Envelope:
    try:
        mtype = MessageType(_field(header, "type", (str,)))
    except ValueError:
        raise MalformedMessage(f"unknown message type {str(header.get('type'))[:40]!r}") from None
    job = _field(header, "job", (str,), optional=True)
    rnd = _field(header, "round", (int,), optional=True)
    seq = _field(header, "seq", (int,))
    body = _field(header, "body", (dict,))
    specs = _field(header, "tensors", (list,))
    if len(specs) > _MAX_TENSORS:
        raise MalformedMessage(f"header lists {len(specs)} tensors; at most {_MAX_TENSORS} are allowed")
    split = int(header["v"]) >= 2
    counts = [_parts(spec, split) for spec in specs]
    if sum(counts) != len(frames):
        raise MalformedMessage(f"header lists {len(specs)} tensors in {sum(counts)} frames but {len(frames)} "
                               "frames follow")
    layout = []
    pos, names = 0, set()
    for spec, n in zip(specs, counts, strict=True):  # every spec checked against its frames, nothing built yet
        parts = frames[pos:pos + n]
        name, dtype, shape = _check_spec(spec[:3], parts)
        if name in names:
            raise MalformedMessage(f"tensor {name!r} appears twice")
        names.add(name)
        layout.append((name, dtype, shape, parts))
        pos += n
    head = Envelope(type=mtype, job=job, round=rnd, seq=seq, body=body, version=int(header["v"]))
    if admit is not None:
        admit(head, sum(f.nbytes for f in frames))
    tensors = {name: _build(dtype, shape, parts) for name, dtype, shape, parts in layout}
    return Envelope(type=mtype, job=job, round=rnd, seq=seq, body=body, tensors=tensors, version=head.version)


def _parts(spec: Any, split: bool) -> int:
    """How many frames the tensor of ``spec`` takes (a 4th element is allowed from version 2 on)."""
    if not isinstance(spec, list) or len(spec) not in ((3, 4) if split else (3,)):
        raise MalformedMessage("tensor spec must be [name, dtype, shape]" + (" or [name, dtype, shape, parts]"
                                                                             if split else ""))
    if len(spec) == 3:
        return 1
    parts = spec[3]
    if not isinstance(parts, int) or isinstance(parts, bool) or not 2 <= parts <= _MAX_FRAMES:
        raise MalformedMessage(f"tensor parts must be an integer in [2, {_MAX_FRAMES}], got {parts!r}"[:200])
    return parts


def _check_spec(spec: list[Any], frames: list[memoryview]) -> tuple[str, np.dtype, list[int]]:
    """Validate one tensor spec against the frames that carry it (no allocation)."""
    if not (len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str) and isinstance(spec[2], list)):
        raise MalformedMessage("tensor spec must be [name, dtype, shape]")
    name, dtype_name, shape = spec
    if dtype_name not in DTYPES:
        raise MalformedMessage(f"tensor {name[:40]!r} has unsupported dtype {dtype_name[:20]!r}")
    if len(shape) > _MAX_DIMS or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                                         for d in shape) or math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        raise MalformedMessage(f"tensor {name[:40]!r} has a bad shape")
    dtype = DTYPES[dtype_name]
    count = math.prod(shape)
    got = sum(f.nbytes for f in frames)
    if count * dtype.itemsize != got:
        raise MalformedMessage(f"tensor {name[:40]!r}: shape {shape} of {dtype_name} needs "
                               f"{count * dtype.itemsize} bytes, its {len(frames)} frame(s) hold {got}")
    if len(frames) > 1 and any(f.nbytes == 0 for f in frames):
        raise MalformedMessage(f"tensor {name[:40]!r} has an empty part")
    return name, dtype, shape


def _build(dtype: np.dtype, shape: list[int], frames: list[memoryview]) -> np.ndarray:
    """The read-only array of a checked spec: a view of its frame, or one copy joined from its parts."""
    count = math.prod(shape)
    got = sum(f.nbytes for f in frames)
    if not count:
        arr = np.zeros(shape, dtype)
    elif len(frames) == 1:
        arr = np.frombuffer(frames[0], dtype=dtype, count=count).reshape(shape)
    else:  # parts: one copy into an array of its own, from memory reused once the last one is dropped
        flat, pos = _JOINED.empty(got, np.uint8), 0
        for f in frames:
            flat[pos:pos + f.nbytes] = np.frombuffer(f, dtype=np.uint8)
            pos += f.nbytes
        arr = flat.view(dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


class SequenceGuard:
    """Reject replayed or reordered messages from one peer: sequence numbers must increase.

    The first sequence number seen (any value >= 0) is accepted; after it only strictly
    larger ones are. Senders start their counter at the clock in microseconds, so a restarted
    sender still moves forward.

    References
    ----------
    .. [1] RFC 4303 section 3.4.3 (the sequence-number check of a replay window, here of size 1).
    """

    def __init__(self) -> None:
        self.last: int | None = None

    def check(self, seq: int) -> None:
        """Accept ``seq`` or raise OutOfOrder.

        Parameters
        ----------
        seq : int
            The sequence number of the incoming message.

        Raises
        ------
        OutOfOrder
            ``seq`` is negative or not larger than the last accepted one.
        """
        if seq < 0 or (self.last is not None and seq <= self.last):
            raise OutOfOrder(f"seq {seq} after {self.last}; replayed or reordered message")
        self.last = seq
