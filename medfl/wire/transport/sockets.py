"""What both ends of a channel share: the socket limits, the options every socket gets, sequence numbers.

Limits: every socket has ZMQ_MAXMSGSIZE (the hard limit: libzmq drops a connection that sends
a larger frame) and an application limit below it on the whole message, enforced by
:func:`~medfl.wire.envelope.decode`, which is answered with a ``too_large`` ERROR. Since
protocol version 2 no frame from an honest peer exceeds 16 MiB (large tensors travel in parts),
so an oversized message is answered rather than dropped; the hard limit still drops any single
oversized frame.

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
        Default: twice ``max_message_bytes``.
    heartbeat_ivl_ms, heartbeat_timeout_ms : int
        ZMTP PING interval and how long without traffic before the connection is dropped.
    linger_ms : int
        How long close() waits for unsent messages.

    References
    ----------
    .. [1] ZeroMQ RFC 37/ZMTP 3.1 (PING/PONG heartbeats); zmq_setsockopt(3).
    """

    max_message_bytes: int = 256 * 2**20
    hard_limit_bytes: int | None = None
    heartbeat_ivl_ms: int = 2000
    heartbeat_timeout_ms: int = 10000
    linger_ms: int = 1000

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes={self.max_message_bytes}; it must be positive")
        if self.hard_limit_bytes is not None and self.hard_limit_bytes < self.max_message_bytes:
            raise ValueError(f"hard_limit_bytes={self.hard_limit_bytes} is below max_message_bytes="
                             f"{self.max_message_bytes}; oversized messages would drop the connection instead "
                             "of getting an error reply. Raise it or leave it unset")
        if self.heartbeat_ivl_ms < 0 or self.heartbeat_timeout_ms < 0 or self.linger_ms < -1:
            raise ValueError("heartbeat_ivl_ms and heartbeat_timeout_ms must be >= 0 and linger_ms >= -1")

    @property
    def hard(self) -> int:
        """ZMQ_MAXMSGSIZE: the explicit hard limit, else twice the application limit."""
        return self.hard_limit_bytes if self.hard_limit_bytes is not None else 2 * self.max_message_bytes


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
    """Set the options every medfl socket gets: linger, the hard size limit, ZMTP heartbeats, queue sizes.

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
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RCVHWM, 1000)
