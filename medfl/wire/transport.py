"""ZeroMQ channels: a ROUTER at the coordinator, a DEALER at each agent (agents connect out).

With keys, both sides run CurveZMQ (encryption, integrity, mutual authentication): the server
guards its socket with :class:`~medfl.wire.auth.AllowListAuthenticator`, the client pins the
server's public key. Without keys the same classes speak plaintext (NULL mechanism): the
in-process twin over ``inproc://`` endpoints and tests of the plain path.

Limits: every socket has ZMQ_MAXMSGSIZE (the hard limit: libzmq drops a connection that sends
a larger frame) and an application limit below it on the whole message, enforced by
:func:`decode`, which is answered with a ``too_large`` ERROR. Since protocol version 2 no frame
from an honest peer exceeds 16 MiB (large tensors travel in parts), so an oversized message is
answered rather than dropped; the hard limit still drops any single oversized frame. Bad input
never raises out of :meth:`ServerChannel.recv`: it is answered with a typed ERROR envelope and
one log line.

The server fails closed: its socket enforces ZAP (ZMQ_ZAP_ENFORCE_DOMAIN), so if the
allow-list thread is gone no client is admitted. libzmq does not reconnect a client whose
key was refused; :attr:`ClientChannel.auth_failed` reports it and
:meth:`ClientChannel.reconnect` tries again (after the operator approved the key).

In-process twin: with ``inproc://`` endpoints, ``keys=None`` and one shared context the same
classes run without the network (no CURVE, no ZMQ_MAXMSGSIZE: libzmq applies neither to
inproc; the application limit, replay guard and error replies still hold).

References
----------
.. [1] ZeroMQ RFC 23/ZMTP (heartbeats), RFC 26/CURVEZMQ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import zmq

from medfl.errors import WireError
from medfl.wire.auth import ZAP_DOMAIN, AllowListAuthenticator
from medfl.wire.envelope import Envelope, SequenceGuard, decode, encode
from medfl.wire.keys import KeyPair, fingerprint
from medfl.wire.messages import MessageType

__all__ = ["ClientChannel", "Incoming", "ServerChannel", "SocketLimits"]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Incoming:
    """A message received by the server, with who sent it.

    Parameters
    ----------
    peer : bytes
        The ROUTER routing id of the connection (reply with it).
    user_id : str
        The ZAP User-Id: the fingerprint of the client's CURVE key; "" without CURVE.
    envelope : Envelope
        The decoded message.

    References
    ----------
    .. [1] ZeroMQ RFC 27/ZAP (User-Id) and zmq_msg_gets(3).
    """

    peer: bytes
    user_id: str
    envelope: Envelope


class _Sequencer:
    """Outgoing sequence numbers: start at the clock in microseconds, so restarts keep increasing."""

    def __init__(self) -> None:
        self.next = time.time_ns() // 1000

    def stamp(self, env: Envelope) -> Envelope:
        seq = self.next
        self.next += 1
        return replace(env, seq=seq)


def _common(sock: zmq.Socket, limits: SocketLimits) -> None:
    sock.setsockopt(zmq.LINGER, limits.linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.hard)
    sock.setsockopt(zmq.HEARTBEAT_IVL, limits.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, limits.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, limits.heartbeat_timeout_ms)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RCVHWM, 1000)


class ServerChannel:
    """The coordinator's ROUTER socket.

    Parameters
    ----------
    bind : str
        Endpoint, e.g. ``tcp://0.0.0.0:7777`` (port 0 picks a free port; see ``endpoint``).
    keys : KeyPair or None
        The server's CURVE key pair; None for plaintext.
    is_allowed : callable(bytes) -> bool, optional
        Allow-list for client public keys (required with keys).
    limits : SocketLimits
        Sizes and heartbeats.
    context : zmq.Context, optional
        Shared context (needed for inproc); a private one by default.

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ, RFC 27/ZAP; zmq_socket(3) (ROUTER, ZMQ_ROUTER_MANDATORY).
    """

    _MAX_PEERS = 65536  # replay guards kept; the oldest is dropped beyond it

    def __init__(self, *, bind: str, keys: KeyPair | None, is_allowed: Callable[[bytes], bool] | None = None,
                 limits: SocketLimits = SocketLimits(), context: zmq.Context | None = None):
        self.limits = limits
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.auth: AllowListAuthenticator | None = None
        self.sock = self.context.socket(zmq.ROUTER)
        try:
            _common(self.sock, limits)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sock.setsockopt(zmq.SNDTIMEO, 1000)
            if keys is not None:
                if keys.secret is None or is_allowed is None:
                    raise ValueError("a CURVE server needs its secret key and an is_allowed allow-list")
                self.auth = AllowListAuthenticator(self.context, is_allowed=is_allowed)
                self.auth.start()
                self.sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
                self.sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler -> nobody gets in
                self.sock.curve_server = True
                self.sock.curve_secretkey = keys.secret
                self.sock.curve_publickey = keys.public
            self.sock.bind(bind)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._guards: dict[bytes, SequenceGuard] = {}
        self._seq = _Sequencer()

    def poll(self, timeout_ms: int) -> bool:
        """True if a message is waiting.

        Parameters
        ----------
        timeout_ms : int
            How long to wait.
        """
        return bool(self.sock.poll(timeout_ms, zmq.POLLIN))

    def recv(self) -> Incoming | None:
        """One message, or None if none is waiting or it was rejected (and answered with an ERROR).

        Never blocks and never raises on bad input: a WireError from decoding or the replay
        guard is answered with an ERROR envelope ``{code, message, in_reply_to}`` and one
        WARNING line naming the peer and the code.
        """
        try:
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        peer = bytes(frames[0].bytes)
        user_id = ""
        if len(frames) > 1:
            try:
                user_id = str(frames[1].get("User-Id") or "")
            except zmq.ZMQError:
                user_id = ""
        seq = None
        try:
            env = decode(frames[1:], max_bytes=self.limits.max_message_bytes)
            seq = env.seq
            self._guard(peer).check(env.seq)
        except WireError as exc:
            log.warning("rejected message from %s: %s (%s)", user_id or peer.hex()[:16], exc.code, exc)
            self.send(peer, Envelope(type=MessageType.ERROR,
                                     body={"code": exc.code, "message": str(exc), "in_reply_to": seq}))
            return None
        return Incoming(peer=peer, user_id=user_id, envelope=env)

    def _guard(self, peer: bytes) -> SequenceGuard:
        guard = self._guards.get(peer)
        if guard is None:
            if len(self._guards) >= self._MAX_PEERS:
                self._guards.pop(next(iter(self._guards)))
            guard = self._guards[peer] = SequenceGuard()
        return guard

    def send(self, peer: bytes, env: Envelope) -> bool:
        """Send to a peer, stamping this channel's sequence number.

        Parameters
        ----------
        peer : bytes
            Routing id from :attr:`Incoming.peer`.
        env : Envelope
            The message (its ``seq`` is replaced).

        Returns
        -------
        bool
            False (and a log line) if the peer is gone or its queue stayed full for a second.
        """
        try:
            self.sock.send_multipart([peer, *encode(self._seq.stamp(env))], copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                log.info("peer %s unreachable; dropped %s", peer.hex()[:16], env.type)
                return False
            raise

    def forget(self, peer: bytes) -> None:
        """Drop the replay guard of a peer that went away.

        Parameters
        ----------
        peer : bytes
            Its routing id.
        """
        self._guards.pop(peer, None)

    def close(self) -> None:
        """Close the socket, the ZAP thread and the private context."""
        if getattr(self, "sock", None) is not None and not self.sock.closed:
            self.sock.close()
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self._own_context:
            self.context.term()
            self._own_context = False

    def __enter__(self) -> ServerChannel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ClientChannel:
    """An agent's DEALER socket, connecting out to the coordinator.

    Parameters
    ----------
    connect : str
        The coordinator's endpoint.
    keys : KeyPair or None
        This agent's CURVE key pair; None for plaintext.
    server_public_key : bytes or None
        The coordinator's pinned public key (required with keys).
    limits : SocketLimits
        Sizes and heartbeats.
    context : zmq.Context, optional
        Shared context (needed for inproc).

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ (server key pinning); zmq_socket(3) (DEALER); zmq_socket_monitor(3).
    """

    def __init__(self, *, connect: str, keys: KeyPair | None, server_public_key: bytes | None,
                 limits: SocketLimits = SocketLimits(), context: zmq.Context | None = None):
        if keys is not None and (keys.secret is None or server_public_key is None):
            raise ValueError("a CURVE client needs its secret key and the server's public key")
        self.limits = limits
        self._endpoint = connect
        self._keys = keys
        self._server_key = server_public_key
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        #: set when the server refused our key (ZAP); libzmq does not retry then, see reconnect()
        self.auth_failed = False
        self.reconnect()

    def reconnect(self) -> None:
        """Close the socket and connect a fresh one (after the server refused our key)."""
        self._close_socket()
        sock = self.context.socket(zmq.DEALER)
        try:
            _common(sock, self.limits)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
            sock.setsockopt(zmq.SNDTIMEO, 0)
            if self._keys is not None:
                sock.curve_secretkey = self._keys.secret
                sock.curve_publickey = self._keys.public
                sock.curve_serverkey = self._server_key
            self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                    | zmq.EVENT_HANDSHAKE_SUCCEEDED)
            sock.connect(self._endpoint)
        except BaseException:
            sock.close(linger=0)
            self.close()
            raise
        self.sock = sock
        self.auth_failed = False
        self._guard = SequenceGuard()
        self._seq = _Sequencer()

    def _drain_monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                if not self.auth_failed:
                    fp = fingerprint(self._keys.public) if self._keys else "?"
                    log.error("the coordinator at %s refused this agent's key %s; ask the operator to run "
                              "'medfl-coordinator nodes approve %s'", self._endpoint, fp, fp)
                self.auth_failed = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.auth_failed = False

    def send(self, env: Envelope) -> bool:
        """Queue a message, stamping this channel's sequence number.

        Parameters
        ----------
        env : Envelope
            The message (its ``seq`` is replaced).

        Returns
        -------
        bool
            False if it could not be queued (no connection and a full queue); retry later.
        """
        return self.send_raw(encode(self._seq.stamp(env)))

    def send_raw(self, frames: list[Any]) -> bool:
        """Send frames as they are, without encoding or a sequence number (tests send garbage).

        Parameters
        ----------
        frames : list of bytes
            The multipart message.
        """
        if self.sock is None:
            return False
        try:
            self.sock.send_multipart(frames, copy=False)
            return True
        except zmq.Again:
            return False

    def recv(self, timeout_ms: int) -> Envelope | None:
        """The next valid message, or None on timeout or if the message was bad (logged, dropped).

        Parameters
        ----------
        timeout_ms : int
            How long to wait.
        """
        self._drain_monitor()
        if self.sock is None or not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            env = decode(frames, max_bytes=self.limits.max_message_bytes)
            self._guard.check(env.seq)
        except WireError as exc:
            log.warning("dropped bad message from the coordinator: %s (%s)", exc.code, exc)
            return None
        return env

    def _close_socket(self) -> None:
        if self._monitor is not None:
            if self.sock is not None and not self.sock.closed:
                self.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self.sock is not None and not self.sock.closed:
            self.sock.close()
        self.sock = None

    def close(self) -> None:
        """Close the socket and the private context."""
        self._close_socket()
        if self._own_context:
            self.context.term()
            self._own_context = False

    def __enter__(self) -> ClientChannel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
