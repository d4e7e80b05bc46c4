"""The coordinator's end of the wire: a ROUTER socket (:class:`ServerChannel`) and what it receives.

With keys the server runs CurveZMQ behind the ZAP allow-list of :mod:`medfl.wire.auth` (which
fails closed); without keys it speaks plaintext (the in-process twin and tests of the plain
path). Bad input never raises out of :meth:`ServerChannel.recv`: it is answered with a typed
ERROR envelope and one log line. Memory: the limits of :mod:`medfl.wire.transport.sockets`, the
unread-bytes watchdog of :mod:`medfl.wire.transport.guard` on TCP endpoints, and an optional
``admit`` callback that refuses a message from its header before its tensors are decoded.

References
----------
.. [1] ZeroMQ RFC 26/CURVEZMQ, RFC 27/ZAP; zmq_socket(3) (ROUTER, ZMQ_ROUTER_MANDATORY).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from medfl.errors import MessageTooLarge, WireError
from medfl.wire.auth import AllowListAuthenticator, enforce
from medfl.wire.envelope import Envelope, SequenceGuard, decode, encode
from medfl.wire.keys import KeyPair
from medfl.wire.messages import MessageType
from medfl.wire.transport.guard import ConnectionGuard
from medfl.wire.transport.sockets import Sequencer, SocketLimits, configure

__all__ = ["Incoming", "ServerChannel"]

log = logging.getLogger(__name__)


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
    admit : callable(Incoming, int), optional
        Called with the message's header (an Incoming whose envelope has no tensors) and the tensor
        bytes it declares, before the tensors are decoded; raising a WireError refuses the message
        with that code.

    References
    ----------
    .. [1] ZeroMQ RFC 26/CURVEZMQ, RFC 27/ZAP; zmq_socket(3) (ROUTER, ZMQ_ROUTER_MANDATORY).
    """

    _MAX_PEERS = 65536  # replay guards kept; the oldest is dropped beyond it

    def __init__(self, *, bind: str, keys: KeyPair | None, is_allowed: Callable[[bytes], bool] | None = None,
                 limits: SocketLimits = SocketLimits(), context: zmq.Context | None = None,
                 admit: Callable[[Incoming, int], None] | None = None):
        self.limits = limits
        self.admit = admit
        self.guard: ConnectionGuard | None = None
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.auth: AllowListAuthenticator | None = None
        self.sock = self.context.socket(zmq.ROUTER)
        try:
            configure(self.sock, limits)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.sock.setsockopt(zmq.SNDTIMEO, 1000)
            if keys is not None:
                if keys.secret is None or is_allowed is None:
                    raise ValueError("a CURVE server needs its secret key and an is_allowed allow-list")
                self.auth = AllowListAuthenticator(self.context, is_allowed=is_allowed)
                enforce(self.sock, auth=self.auth, keys=keys)
            if limits.guard and bind.startswith("tcp://"):
                self.guard = ConnectionGuard(self.sock, budget=limits.budget)
            self.sock.bind(bind)
        except BaseException:
            self.close()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._guards: dict[bytes, SequenceGuard] = {}
        #: bytes of the messages received and sent (frames after the routing id), for the metrics
        self.bytes_in = 0
        self.bytes_out = 0
        self._seq = Sequencer()

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
        self.bytes_in += sum(len(f) for f in frames[1:])
        user_id = ""
        if len(frames) > 1:
            try:
                user_id = str(frames[1].get("User-Id") or "")
            except zmq.ZMQError:
                user_id = ""
        if self.guard is not None:
            self.guard.consumed(frames, user_id=user_id)
            cut = self.guard.take_notice(user_id)
            if cut is not None:
                self.send(peer, Envelope(type=MessageType.ERROR, body={
                    "code": MessageTooLarge.code, "in_reply_to": None, "message":
                    f"an earlier connection of this key was closed after {cut} bytes of an unfinished message, over "
                    f"this socket's limit of {self.limits.max_message_bytes} bytes; that message was dropped"}))
        seq = None
        admit = None
        if self.admit is not None:
            hook = self.admit

            def admit(head: Envelope, tensor_bytes: int) -> None:
                nonlocal seq
                seq = head.seq
                hook(Incoming(peer=peer, user_id=user_id, envelope=head), tensor_bytes)
        try:
            env = decode(frames[1:], max_bytes=self.limits.max_message_bytes, admit=admit)
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
            frames = encode(self._seq.stamp(env))
            self.sock.send_multipart([peer, *frames], copy=False)
            self.bytes_out += sum(memoryview(f).nbytes for f in frames)
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
        """Close the socket, the watchdog, the ZAP thread and the private context."""
        guard = getattr(self, "guard", None)
        if guard is not None:
            guard.stop()
            self.guard = None
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

