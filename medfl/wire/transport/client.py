"""The agent's end of the wire: a DEALER socket connecting out to the coordinator (:class:`ClientChannel`).

With keys the client runs CurveZMQ and pins the server's public key; without keys it speaks
plaintext (the in-process twin and tests of the plain path). libzmq does not reconnect a
client whose key was refused: :attr:`ClientChannel.auth_failed` reports it and
:meth:`ClientChannel.reconnect` tries again (after the operator approved the key). A bad
message from the server is logged and dropped, never raised. :attr:`ClientChannel.connected`
and :attr:`ClientChannel.handshakes` follow the connection (the server restarted when a new
handshake follows a disconnect), so the agent can say hello first on a new connection.

References
----------
.. [1] ZeroMQ RFC 26/CURVEZMQ (server key pinning); zmq_socket(3) (DEALER); zmq_socket_monitor(3).
"""

from __future__ import annotations

import logging
from typing import Any

import zmq

from medfl.errors import WireError
from medfl.wire.envelope import Envelope, SequenceGuard, decode, encode
from medfl.wire.keys import KeyPair, fingerprint
from medfl.wire.transport.sockets import Sequencer, SocketLimits, configure

__all__ = ["ClientChannel"]

log = logging.getLogger(__name__)


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
        #: True between a completed handshake and the next disconnect
        self.connected = False
        #: completed handshakes of the current socket (a restart of the server adds one)
        self.handshakes = 0
        self.reconnect()

    def reconnect(self) -> None:
        """Close the socket and connect a fresh one (after the server refused our key)."""
        self._close_socket()
        sock = self.context.socket(zmq.DEALER)
        try:
            configure(sock, self.limits)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
            sock.setsockopt(zmq.SNDTIMEO, 0)
            if self._keys is not None:
                sock.curve_secretkey = self._keys.secret
                sock.curve_publickey = self._keys.public
                sock.curve_serverkey = self._server_key
            self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                                    | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            sock.connect(self._endpoint)
        except BaseException:
            sock.close(linger=0)
            self.close()
            raise
        self.sock = sock
        self.auth_failed = False
        self.connected, self.handshakes = False, 0
        self._guard = SequenceGuard()
        self._seq = Sequencer()

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
                self.connected = True
                self.handshakes += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.connected = False

    def poll_events(self) -> None:
        """Update :attr:`connected`, :attr:`handshakes` and :attr:`auth_failed` from the socket's events.

        :meth:`recv` does this too; call it before deciding what to send first.
        """
        self._drain_monitor()

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
