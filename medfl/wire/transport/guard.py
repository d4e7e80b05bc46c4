"""A watchdog that closes a TCP connection whose unread bytes pass a budget (:class:`ConnectionGuard`).

Why it exists: libzmq checks ZMQ_MAXMSGSIZE per frame, and its high-water marks count whole
messages, so a peer can stream any number of frames that are each under the limit into one
multipart message, and libzmq keeps every one of them in memory until the last frame arrives
(the message is delivered atomically). Nothing in libzmq bounds that sum.

How: a thread reads the socket's monitor (ZMQ_EVENT_ACCEPTED / CONNECTED give the connection's
file descriptor, DISCONNECTED / CLOSED end it) and asks the kernel how many bytes arrived on
each connection (``TCP_INFO.tcpi_bytes_received``): every ``interval_s`` (5 ms) for a connection
whose count moved at the last look, every ``idle_s`` (25 ms) for a quiet one (a look costs about
5 us: 0.2 % of a core per 10 idle connections). The owner reports what it took off the socket
(:meth:`ConnectionGuard.consumed`, keyed by the ZMQ_SRCFD of the frames). The difference, less
an allowance for framing, CURVE boxes and heartbeats, is what libzmq and the kernel hold for
that connection and the application has not read. Past ``budget`` bytes the thread shuts the
connection down (``shutdown(SHUT_RDWR)`` on the descriptor): libzmq sees the end of the stream,
drops the partial message (its pipe rolls back) and frees it; a DEALER peer reconnects by
itself. The cut is logged once with the peer's address and key fingerprint, and
:meth:`ConnectionGuard.take_notice` lets the owner tell that key ``too_large`` on its next
message.

Descriptors are reused by the kernel: each one is matched by its peer address, checked before
every probe and before a cut, so a new connection on a recycled number is never touched.
TCP only: ``inproc://`` and ``ipc://`` endpoints carry no descriptor and are not watched.

References
----------
.. [1] zmq_socket_monitor(3); zmq_msg_get(3) (ZMQ_SRCFD); tcp(7) (TCP_INFO); shutdown(2).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

__all__ = ["ConnectionGuard", "allowance"]

log = logging.getLogger(__name__)

_TCP_INFO_LEN = 232
_BYTES_RECEIVED_AT = 128          # offset of tcpi_bytes_received (u64) in struct tcp_info (Linux >= 4.1)
_FIXED_ALLOWANCE = 16 << 10       # ZMTP greeting, CURVE handshake (about 1 KiB), some slack
_PER_FRAME = 64                   # ZMTP frame header (<= 9 bytes) + CURVE MESSAGE box (33 bytes) + slack
_PER_SECOND = 64                  # PING/PONG commands (about 43 bytes each under CURVE, one each way per 2 s)
_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)


def allowance(*, frames: int, seconds: float) -> int:
    """Bytes a connection may carry beyond its payload: framing, CURVE boxes and heartbeats.

    Parameters
    ----------
    frames : int
        Frames the application has read from the connection.
    seconds : float
        How long the connection has been open.
    """
    return _FIXED_ALLOWANCE + _PER_FRAME * frames + int(_PER_SECOND * seconds)


@dataclass
class _Conn:
    fd: int
    peer: tuple[Any, ...]
    opened: float = field(default_factory=time.monotonic)
    consumed: int = 0
    frames: int = 0
    user_id: str = ""
    unread: int = 0
    received: int = -1
    due: float = 0.0


def _open_fd(fd: int) -> socket.socket | None:
    """A duplicate of descriptor ``fd`` as a socket (the caller closes it), or None if it is not a TCP socket."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        s = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None
    if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
        s.close()
        return None
    return s


def _peer_of(s: socket.socket) -> tuple[Any, ...] | None:
    try:
        return tuple(s.getpeername())
    except OSError:
        return None


class ConnectionGuard:
    """Watch a ROUTER's or DEALER's TCP connections and cut any holding more than ``budget`` unread bytes.

    Parameters
    ----------
    sock : zmq.Socket
        The socket to watch (its monitor is taken: a socket has one monitor).
    budget : int
        Unread bytes allowed per connection, beyond :func:`allowance`.
    interval_s, idle_s : float
        How often the kernel's counter of a connection is read while bytes arrive, and while none do.
    forward : int
        Further monitor event flags the owner wants; they are queued for :meth:`events`.

    References
    ----------
    .. [1] zmq_socket_monitor(3); zmq_msg_get(3) (ZMQ_SRCFD); tcp(7) (TCP_INFO).
    """

    def __init__(self, sock: zmq.Socket, *, budget: int, interval_s: float = 0.005, idle_s: float = 0.025,
                 forward: int = 0):
        if budget <= 0:
            raise ValueError(f"budget={budget}; it must be positive")
        self.budget = budget
        self.interval_s, self.idle_s = interval_s, idle_s
        self._forward = forward
        self._sock = sock
        self._monitor = sock.get_monitor_socket(_EVENTS | forward)
        self._conns: dict[int, _Conn] = {}
        self._lock = threading.Lock()
        self._events: list[tuple[int, int]] = []
        self._notices: dict[str, int] = {}
        #: connections cut so far (for tests and benchmarks)
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medfl-conn-guard", daemon=True)
        self._thread.start()

    # ---- owner's side (the socket's thread) -----------------------------------------------
    def consumed(self, frames: list[Any], *, user_id: str = "") -> None:
        """Count frames the owner took off the socket against the connection they came from.

        Parameters
        ----------
        frames : list of zmq.Frame
            The message as received (``copy=False``), a ROUTER's routing id included.
        user_id : str
            The ZAP User-Id of the sender, if known.
        """
        if not frames:
            return
        try:
            fd = int(frames[-1].get(zmq.SRCFD))
        except (zmq.ZMQError, AttributeError, TypeError, ValueError):
            return
        size = sum(len(f) for f in frames)
        with self._lock:
            conn = self._conns.get(fd)
        if conn is None:  # read before the thread saw the connection's ACCEPTED event: register it here
            conn = self._register(fd)
        if conn is not None:
            with self._lock:
                conn.consumed += size
                conn.frames += len(frames)
                if user_id:
                    conn.user_id = user_id

    def _register(self, fd: int) -> _Conn | None:
        """The record of descriptor ``fd``: the one kept if it is the same connection, else a new one."""
        s = _open_fd(fd)
        peer = _peer_of(s) if s is not None else None
        if s is not None:
            s.close()
        if peer is None:
            return None
        with self._lock:
            conn = self._conns.get(fd)
            if conn is None or conn.peer != peer:
                conn = self._conns[fd] = _Conn(fd=fd, peer=peer)
            return conn

    def events(self) -> list[tuple[int, int]]:
        """Monitor events of the ``forward`` kinds since the last call, as ``(event, value)``."""
        with self._lock:
            out, self._events = self._events, []
        return out

    def take_notice(self, user_id: str) -> int | None:
        """The unread bytes at which a connection of ``user_id`` was cut, once; None if none was."""
        if not user_id:
            return None
        with self._lock:
            return self._notices.pop(user_id, None)

    def unread(self) -> dict[int, int]:
        """Unread bytes per watched descriptor at the last probe."""
        with self._lock:
            return {fd: c.unread for fd, c in self._conns.items()}

    def stop(self) -> None:
        """Stop the thread and release the monitor (call before closing the socket)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)

    # ---- the watchdog thread ------------------------------------------------------------
    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while not self._stop.is_set():
            try:
                while self._monitor.poll(0):
                    msg = recv_monitor_message(self._monitor)
                    self._on_event(int(msg["event"]), int(msg["value"]))
            except zmq.ZMQError:
                return  # the context is terminating
            self._probe()
            self._stop.wait(self.interval_s)

    def _on_event(self, event: int, value: int) -> None:
        if event & (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED):
            self._register(value)
        elif event & (zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED):
            with self._lock:
                self._conns.pop(value, None)
        if event & self._forward:
            with self._lock:
                self._events.append((event, value))

    def _probe(self) -> None:
        now = time.monotonic()
        with self._lock:
            conns = [c for c in self._conns.values() if c.due <= now]
        for conn in conns:
            s = _open_fd(conn.fd)
            if s is None:
                continue
            try:
                if _peer_of(s) != conn.peer:  # closed, and the number reused by another connection
                    with self._lock:
                        if self._conns.get(conn.fd) is conn:
                            del self._conns[conn.fd]
                    continue
                try:
                    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
                except OSError:
                    continue
                received = struct.unpack_from("<Q", info, _BYTES_RECEIVED_AT)[0]
                conn.due = now + (self.interval_s if received != conn.received else self.idle_s)
                conn.received = received
                with self._lock:
                    unread = received - conn.consumed - allowance(frames=conn.frames,
                                                                  seconds=time.monotonic() - conn.opened)
                    conn.unread = max(unread, 0)
                if unread > self.budget:
                    self._cut(s, conn, unread)
            finally:
                s.close()

    def _cut(self, s: socket.socket, conn: _Conn, unread: int) -> None:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            return
        with self._lock:
            self._conns.pop(conn.fd, None)
            self.cuts += 1
            if conn.user_id:
                if len(self._notices) > 10_000:
                    self._notices.clear()
                self._notices[conn.user_id] = unread
        who = f"key {conn.user_id[:23]}" if conn.user_id else "a peer that has not completed a message yet"
        log.warning("closed the connection from %s (%s): %.1f MiB received and not yet read, over the budget of "
                    "%.1f MiB (1.25 x the message limit); the partial message was dropped",
                    ":".join(str(p) for p in conn.peer[:2]), who, unread / 2**20, self.budget / 2**20)
