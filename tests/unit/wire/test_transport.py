"""ROUTER/DEALER channels over CurveZMQ on loopback, tested from the attacker's side too.

The contract tests run against both the tcp+CURVE transport and the in-process twin
(inproc, plaintext, shared context).
"""

from __future__ import annotations

import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from medfl.wire import ClientChannel, Envelope, MessageType, ServerChannel, SocketLimits, fingerprint, generate_keypair

pytestmark = pytest.mark.timeout(120)


def recv_server(srv: ServerChannel, timeout_ms: int = 3000):
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if srv.poll(50):
            got = srv.recv()
            if got is not None:
                return got
    return None


def drain(srv: ServerChannel, ms: int = 1500) -> list:
    """Let the server handle everything that arrives within ``ms`` (answering bad input)."""
    out = []
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline:
        if srv.poll(20):
            got = srv.recv()
            if got is not None:
                out.append(got)
    return out


class Pair:
    def __init__(self, kind: str, limits: SocketLimits = SocketLimits()):
        self.kind = kind
        self.allowed: set[bytes] = set()
        self.limits = limits
        if kind == "curve":
            self.server_keys = generate_keypair()
            self.server = ServerChannel(bind="tcp://127.0.0.1:0", keys=self.server_keys,
                                        is_allowed=lambda k: k in self.allowed, limits=limits)
            self.ctx = None
        else:
            self.ctx = zmq.Context()
            self.server_keys = None
            self.server = ServerChannel(bind=f"inproc://medfl-{id(self)}", keys=None, limits=limits, context=self.ctx)
        self.clients: list[ClientChannel] = []

    def client(self, *, approved: bool = True, server_key: bytes | None = None) -> ClientChannel:
        if self.kind == "curve":
            keys = generate_keypair()
            if approved:
                self.allowed.add(keys.public)
            c = ClientChannel(connect=self.server.endpoint, keys=keys,
                              server_public_key=server_key or self.server_keys.public, limits=self.limits)
            c.keys = keys
        else:
            c = ClientChannel(connect=self.server.endpoint, keys=None, server_public_key=None, limits=self.limits,
                              context=self.ctx)
            c.keys = None
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        self.server.close()
        if self.ctx is not None:
            self.ctx.term()


@pytest.fixture(params=["curve", "inproc"])
def pair(request):
    p = Pair(request.param)
    yield p
    p.close()


@pytest.fixture
def curve():
    p = Pair("curve", SocketLimits(max_message_bytes=1 << 20, hard_limit_bytes=4 << 20))
    yield p
    p.close()


# ---- contract: both transports -----------------------------------------------------------
def test_request_reply_with_tensors(pair):
    c = pair.client()
    w = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    c.send(Envelope(type=MessageType.HELLO, body={"name": "h1"}, tensors={"w": w}))
    got = recv_server(pair.server)
    assert got is not None and got.envelope.type == MessageType.HELLO and got.envelope.body == {"name": "h1"}
    np.testing.assert_array_equal(got.envelope.tensors["w"], w)
    if pair.kind == "curve":
        assert got.user_id == fingerprint(c.keys.public)
    else:
        assert got.user_id == ""
    assert pair.server.send(got.peer, Envelope(type=MessageType.WELCOME, body={"coordinator": "c"}))
    reply = c.recv(timeout_ms=3000)
    assert reply is not None and reply.type == MessageType.WELCOME


def test_replay_is_answered_out_of_order(pair):
    c = pair.client()
    frames = None
    env = Envelope(type=MessageType.HEARTBEAT, seq=1000)
    from medfl.wire import encode

    frames = encode(env)
    c.send_raw(list(frames))
    assert recv_server(pair.server) is not None
    c.send_raw(list(encode(env)))  # the same message again
    assert recv_server(pair.server, 500) is None
    err = c.recv(timeout_ms=3000)
    assert err.type == MessageType.ERROR and err.body["code"] == "out_of_order" and err.body["in_reply_to"] == 1000


def test_garbage_and_versions_answered_while_others_served(pair):
    bad, good = pair.client(), pair.client()
    bad.send_raw([b"\x00\x01\x02 definitely not msgpack"])
    bad.send_raw([msgpack.packb({"v": 7, "type": "hello", "job": None, "round": None, "seq": 1, "body": {},
                                 "tensors": []})])
    good.send(Envelope(type=MessageType.HELLO, body={"name": "good"}))
    got = drain(pair.server)
    assert [g.envelope.body["name"] for g in got] == ["good"]
    codes = [bad.recv(timeout_ms=3000).body["code"] for _ in range(2)]
    assert codes == ["malformed", "unsupported_version"]


def test_send_to_vanished_peer_returns_false(pair):
    c = pair.client()
    c.send(Envelope(type=MessageType.HEARTBEAT))
    got = recv_server(pair.server)
    assert pair.server.send(b"\x00nobody", Envelope(type=MessageType.WELCOME)) is False
    assert got is not None


# ---- CURVE only: the attacker's side -----------------------------------------------------
def test_unapproved_key_gets_nothing_through_until_approved(curve):
    intruder = curve.client(approved=False)
    intruder.send(Envelope(type=MessageType.HELLO, body={"name": "intruder"}))
    assert recv_server(curve.server, 1500) is None
    deadline = time.monotonic() + 5
    while not intruder.auth_failed and time.monotonic() < deadline:
        intruder.recv(timeout_ms=100)
    assert intruder.auth_failed, "the client should learn that its key was refused"
    curve.allowed.add(intruder.keys.public)  # the operator approves it
    intruder.reconnect()
    intruder.send(Envelope(type=MessageType.HELLO, body={"name": "now-approved"}))
    got = recv_server(curve.server, 5000)
    assert got is not None and got.user_id == fingerprint(intruder.keys.public)


def test_wrong_server_key_never_reaches_the_server(curve):
    impostor_key = generate_keypair().public
    c = curve.client(server_key=impostor_key)
    c.send(Envelope(type=MessageType.HELLO, body={"name": "misled"}))
    assert recv_server(curve.server, 1500) is None
    assert c.recv(timeout_ms=300) is None


def test_too_large_answered_and_hard_limit_drops_only_that_peer(curve):
    a, b = curve.client(), curve.client()
    a.send(Envelope(type=MessageType.UPDATE, tensors={"w": np.zeros((2 << 20) // 4, np.float32)}))  # 2 MiB > 1 MiB
    assert drain(curve.server) == []
    err = a.recv(timeout_ms=5000)
    if err is None:
        # On a loaded machine the connection can be cut before the server reads the message: by the
        # watchdog (unread bytes past 1.25 x the limit; the key is told too_large on its next message)
        # or by libzmq's per-frame limit (no notice: docs/DECISIONS.md). Either way the peer is served again.
        a.send(Envelope(type=MessageType.HELLO, body={"name": "a"}))
        got = recv_server(curve.server)
        assert got is not None and got.envelope.body["name"] == "a"
        err = a.recv(timeout_ms=2000)
        assert err is None or err.body["code"] == "too_large", err
    else:
        assert err.body["code"] == "too_large", err.body
    # ZMQ_MAXMSGSIZE bounds each frame: a version 2 sender cuts tensors into 16 MiB frames, so the frame
    # over the hard limit comes from a version 1 envelope (one frame per tensor)
    a.send(Envelope(type=MessageType.UPDATE, tensors={"w": np.zeros((6 << 20) // 4, np.float32)}, version=1))
    assert drain(curve.server) == []
    assert a.recv(timeout_ms=500) is None  # the connection was dropped, no reply
    b.send(Envelope(type=MessageType.HELLO, body={"name": "b"}))
    got = recv_server(curve.server)
    assert got is not None and got.envelope.body["name"] == "b"


class TamperingRelay:
    """A TCP man in the middle on loopback that flips one byte of client->server traffic after
    ``after`` bytes (past the CURVE handshake). Bounded: it serves one connection and stops."""

    def __init__(self, target_port: int, after: int):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.lsock.settimeout(10)
        self.port = self.lsock.getsockname()[1]
        self.target_port, self.after = target_port, after
        self.flipped = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pipe(self, src, dst, tamper):
        seen = 0
        src.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if tamper and not self.flipped and seen + len(data) > self.after:
                i = max(0, self.after - seen)
                data = data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:]
                self.flipped = True
            seen += len(data)
            try:
                dst.sendall(data)
            except OSError:
                break

    def _run(self):
        try:
            client, _ = self.lsock.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        t = threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True)
        t.start()
        self._pipe(client, upstream, True)
        for s in (client, upstream):
            s.close()

    def close(self):
        self.stop.set()
        self.lsock.close()
        self.thread.join(timeout=5)


def test_tampered_frame_is_never_delivered(curve):
    port = int(curve.server.endpoint.rsplit(":", 1)[1])
    keys = generate_keypair()
    curve.allowed.add(keys.public)
    # the CURVE handshake (greeting + HELLO/WELCOME/INITIATE/READY) is a few hundred bytes; flip later
    relay = TamperingRelay(port, after=1200)
    try:
        c = ClientChannel(connect=f"tcp://127.0.0.1:{relay.port}", keys=keys,
                          server_public_key=curve.server_keys.public)
        curve.clients.append(c)
        payload = np.arange(4096, dtype=np.float32)
        c.send(Envelope(type=MessageType.UPDATE, body={"n": 1}, tensors={"w": payload}))
        got = recv_server(curve.server, 2000)
        assert relay.flipped, "the relay never saw enough traffic to tamper with"
        assert got is None, "a tampered message must not be delivered"
        honest = curve.client()
        honest.send(Envelope(type=MessageType.HELLO, body={"name": "honest"}))
        got = recv_server(curve.server)
        assert got is not None and got.envelope.body["name"] == "honest"
    finally:
        relay.close()


# ---- more contract and attacker-side tests -----------------------------------------------
def test_recv_without_a_message_returns_none_at_once(pair):
    t0 = time.monotonic()
    assert pair.server.recv() is None
    assert time.monotonic() - t0 < 0.5


def test_decoded_tensors_are_views_of_the_zmq_frame(pair):
    c = pair.client()
    c.send(Envelope(type=MessageType.UPDATE, tensors={"w": np.arange(100_000, dtype=np.float32)}))
    got = recv_server(pair.server)
    arr = got.envelope.tensors["w"]
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    assert isinstance(arr.base, memoryview) and isinstance(arr.base.obj, zmq.Frame)
    assert not got.envelope.tensors["w"].flags.writeable


def test_sequence_numbers_increase_and_start_at_the_clock(pair):
    before = time.time_ns() // 1000
    c = pair.client()
    for _ in range(3):
        c.send(Envelope(type=MessageType.HEARTBEAT))
    seqs = [recv_server(pair.server).envelope.seq for _ in range(3)]
    assert seqs == sorted(set(seqs)) and seqs[0] >= before


def test_bad_frames_from_the_server_are_dropped_by_the_client(pair):
    c = pair.client()
    c.send(Envelope(type=MessageType.HELLO, body={"name": "x"}))
    peer = recv_server(pair.server).peer
    pair.server.sock.send_multipart([peer, b"\xc1 junk"])
    assert pair.server.send(peer, Envelope(type=MessageType.WELCOME, body={"coordinator": "c"}))
    assert c.recv(timeout_ms=3000) is None  # the junk: logged and dropped
    ok = c.recv(timeout_ms=3000)
    assert ok is not None and ok.type == MessageType.WELCOME


def test_rejection_is_one_warning_without_payload(pair, caplog):
    c = pair.client()
    secret_payload = "PATIENT-1234-NAME"
    c.send_raw([msgpack.packb({"v": 1, "type": "hello", "job": None, "round": None, "seq": "x",
                               "body": {"name": secret_payload}, "tensors": []})])
    with caplog.at_level("WARNING", logger="medfl.wire"):
        assert drain(pair.server, 800) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "medfl.wire.transport.server"]
    assert len(lines) == 1 and "malformed" in lines[0] and secret_payload not in lines[0]
    err = c.recv(timeout_ms=3000)
    assert err.body["code"] == "malformed" and err.body["in_reply_to"] is None


def test_socket_limits_are_validated():
    with pytest.raises(ValueError, match="hard_limit_bytes"):
        SocketLimits(max_message_bytes=100, hard_limit_bytes=10)
    with pytest.raises(ValueError, match="positive"):
        SocketLimits(max_message_bytes=0)
    assert SocketLimits(max_message_bytes=10).hard == 12  # 1.25 x the limit


def test_curve_needs_keys_on_both_sides():
    keys = generate_keypair()
    with pytest.raises(ValueError, match="allow-list"):
        ServerChannel(bind="tcp://127.0.0.1:0", keys=keys)
    with pytest.raises(ValueError, match="server's public key"):
        ClientChannel(connect="tcp://127.0.0.1:1", keys=keys, server_public_key=None)


def test_is_allowed_is_asked_on_every_handshake_and_errors_deny(curve, caplog):
    asked = []

    def broken(key):
        asked.append(key)
        raise RuntimeError("database is locked")

    curve.server.auth._provider.is_allowed = broken
    c = curve.client()
    with caplog.at_level("INFO", logger="medfl.wire.auth"):
        c.send(Envelope(type=MessageType.HELLO, body={"name": "x"}))
        assert recv_server(curve.server, 1500) is None
    assert asked == [c.keys.public]
    text = caplog.text
    assert fingerprint(c.keys.public) in text and "denying" in text
    assert c.keys.secret.decode() not in text


def test_denial_is_logged_with_the_fingerprint(curve, caplog):
    intruder = curve.client(approved=False)
    with caplog.at_level("WARNING", logger="medfl.wire.auth"):
        intruder.send(Envelope(type=MessageType.HELLO))
        assert recv_server(curve.server, 1500) is None
    denials = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
    assert denials and fingerprint(intruder.keys.public) in denials[0]
    assert intruder.keys.secret.decode() not in caplog.text


def test_server_fails_closed_without_its_zap_handler(curve):
    good = curve.client()
    good.send(Envelope(type=MessageType.HELLO, body={"name": "before"}))
    assert recv_server(curve.server) is not None
    curve.server.auth.stop()  # the allow-list thread is gone
    late = curve.client()  # its key is approved, but nobody can check it now
    late.send(Envelope(type=MessageType.HELLO, body={"name": "late"}))
    assert recv_server(curve.server, 1500) is None
    good.send(Envelope(type=MessageType.HEARTBEAT))  # established sessions keep working
    got = recv_server(curve.server)
    assert got is not None and got.envelope.type == MessageType.HEARTBEAT


def test_plaintext_client_cannot_talk_to_a_curve_server(curve):
    c = ClientChannel(connect=curve.server.endpoint, keys=None, server_public_key=None)
    curve.clients.append(c)
    c.send(Envelope(type=MessageType.HELLO, body={"name": "plain"}))
    assert recv_server(curve.server, 1500) is None
