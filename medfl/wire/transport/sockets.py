"""What both ends of a channel share: the socket limits, the options every socket gets, sequence numbers.

Limits, enforced before a message is buffered in full:

- the application limit ``max_message_bytes`` on a whole message (all frames together),
  checked by :func:`~medfl.wire.envelope.decode` and answered with a ``too_large`` ERROR;
- ZMQ_MAXMSGSIZE per frame at 1.25 x that limit (:attr:`SocketLimits.hard`): libzmq reads a
  frame's declared size first and closes the connection (no reply, nothing allocated) when it is
  larger. That is libzmq's behaviour, not a choice of ours; since protocol version 2 no frame
  from an honest peer exceeds 16 MiB (large tensors travel in parts), so it only hits a peer
  that ignores the protocol or a limit below 16 MiB;
- the sum of frames of one message, which libzmq does not bound (it holds every frame of a
  multipart message until the last one arrives): the watchdog of
  :mod:`medfl.wire.transport.guard` closes a TCP connection once the bytes it delivered and the
  application has not read pass the same 1.25 x limit (:attr:`SocketLimits.budget`);
- queues: ZMQ_RCVHWM and ZMQ_SNDHWM of 64 messages per peer (libzmq stops reading a peer whose
  queue is full, so a peer cannot make the daemon queue without bound), and a CURVE handshake
  must finish within 10 s (ZMQ_HANDSHAKE_IVL).

So, per TCP connection, the daemon holds at most about 1.25 x the limit of a peer's unread data
(plus the kernel's socket buffer); a message between the limit and 1.25 x the limit is answered
``too_large``, a larger one closes the connection and its key is told ``too_large`` on its next
message.

References
----------
.. [1] ZeroMQ RFC 23/ZMTP (heartbeats), RFC 37/ZMTP 3.1; zmq_setsockopt(3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import zmq

from medfl.wire.envelope import Envelope

__all__ = ["Sequencer", "SocketLimits", "configure"]


@dataclass(frozen=True)
class SocketLimits:
    """Size and liveness settings of a socket.

    Parameters
    ----------
    max_message_bytes : int
        Application limit on a message's total size; larger ones get a ``too_large`` ERROR.
    hard_limit_bytes : int or None
        ZMQ_MAXMSGSIZE (per frame): libzmq drops a connection that sends a larger frame.
        Default: 1.25 x ``max_message_bytes``.
    heartbeat_ivl_ms, heartbeat_timeout_ms : int
        ZMTP PING interval and how long without traffic before the connection is dropped.
    linger_ms : int
        How long close() waits for unsent messages.
    hwm : int
        ZMQ_SNDHWM and ZMQ_RCVHWM: messages queued per peer in each direction.
    handshake_ms : int
        ZMQ_HANDSHAKE_IVL: a connection that has not finished its handshake by then is closed.
    guard : bool
        Run the unread-bytes watchdog (:mod:`medfl.wire.transport.guard`) on TCP sockets; off only
        to measure what it prevents (benchmarks/membound.py).

    References
    ----------
    .. [1] ZeroMQ RFC 37/ZMTP 3.1 (PING/PONG heartbeats); zmq_setsockopt(3).
    """

    max_message_bytes: int = 256 * 2**20
    hard_limit_bytes: int | None = None
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 10000
    linger_ms: int = 1000
    hwm: int = 64
    handshake_ms: int = 10000
    guard: bool = True

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes={self.max_message_bytes}; it must be positive")
        if self.hard_limit_bytes is not None and self.hard_limit_bytes < self.max_message_bytes:
            raise ValueError(f"hard_limit_bytes={self.hard_limit_bytes} is below max_message_bytes="
                             f"{self.max_message_bytes}; oversized messages would drop the connection instead "
                             "of getting an error reply. Raise it or leave it unset")
        if self.heartbeat_ivl_ms < 0 or self.heartbeat_timeout_ms < 0 or self.linger_ms < -1:
            raise ValueError("heartbeat_ivl_ms and heartbeat_timeout_ms must be >= 0 and linger_ms >= -1")
        if self.hwm < 1 or self.handshake_ms < 0:
            raise ValueError(f"hwm={self.hwm} must be >= 1 and handshake_ms={self.handshake_ms} >= 0")

    @property
    def hard(self) -> int:
        """ZMQ_MAXMSGSIZE: the explicit hard limit, else 1.25 x the application limit."""
        return self.hard_limit_bytes if self.hard_limit_bytes is not None else self.budget

    @property
    def budget(self) -> int:
        """Unread bytes the watchdog lets one connection hold: 1.25 x the application limit."""
        return self.max_message_bytes + self.max_message_bytes // 4


class Sequencer:
    """Outgoing sequence numbers: start at the clock in microseconds, so restarts keep increasing."""

    def __init__(self) -> None:
        self.next = time.time_ns() // 1000

    def stamp(self, env: Envelope) -> Envelope:
        """``env`` with the next sequence number.

        Parameters
        ----------
        env : Envelope
            The message (its ``seq`` is replaced).
        """
        seq = self.next
        self.next += 1
        return replace(env, seq=seq)


def configure(sock: zmq.Socket, limits: SocketLimits) -> None:
    """Set the options every medfl socket gets: linger, the hard size limit, heartbeats, queues, handshake time.

    Parameters
    ----------
    sock : zmq.Socket
        A fresh ROUTER or DEALER socket.
    limits : SocketLimits
        Its sizes and heartbeats.
    """
    sock.setsockopt(zmq.LINGER, limits.linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.hard)
    sock.setsockopt(zmq.HEARTBEAT_IVL, limits.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, limits.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, limits.heartbeat_timeout_ms)
    sock.setsockopt(zmq.SNDHWM, limits.hwm)
    sock.setsockopt(zmq.RCVHWM, limits.hwm)
    sock.setsockopt(zmq.HANDSHAKE_IVL, limits.handshake_ms)
