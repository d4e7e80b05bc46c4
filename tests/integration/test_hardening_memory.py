"""An approved peer that sends past the size limit cannot make the coordinator daemon buffer it.

A real daemon process (max_message_mb = 24) and a raw pyzmq DEALER with an approved CURVE key.
The daemon's memory is read from /proc/<pid>/status: VmHWM (peak resident set, reset through
/proc/<pid>/clear_refs before each attack) against the resident set before it. The bound stated
and asserted: the peak grows by at most 1.25 x the limit (the watchdog's budget) + 24 MiB (what
libzmq, CURVE and the kernel buffer in flight between two probes of the watchdog).
"""

from __future__ import annotations

import json
import pathlib
import time

import msgpack
import numpy as np
import pytest
import zmq

from benchmarks.membound import _rss
from medfl.wire import Envelope, MessageType, decode, encode, read_keypair, read_public_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LIMIT_MB = 24
MIB = 2**20
BOUND = LIMIT_MB * MIB * 5 // 4 + 24 * MIB
HELLO = {"name": "rogue", "version": "0.1.0", "models": ["cnn"], "min_parties": 2, "train_samples": 10,
         "val_samples": 4}


def _status(pid: int) -> dict[str, int]:
    return _rss(pid)  # VmRSS and VmHWM, in bytes, from /proc (the benchmark's reader)


def _reset_peak(pid: int) -> int:
    """Reset VmHWM to the current resident set (clear_refs 5) and return that set."""
    pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


class Peer:
    """A hand-driven DEALER with an approved key: it sends whatever frames it likes."""

    def __init__(self, endpoint: str, keys, server_key: bytes):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey, self.sock.curve_publickey = keys.secret, keys.public
        self.sock.curve_serverkey = server_key
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.connect(endpoint)
        self.seq = time.time_ns() // 1000

    def header(self, mtype: str, *, tensors: list, job: str | None = None) -> bytes:
        self.seq += 1
        return msgpack.packb({"v": 2, "type": mtype, "job": job, "round": 1, "seq": self.seq,
                              "body": {"num_samples": 1}, "tensors": tensors})

    def send(self, env: Envelope) -> None:
        from dataclasses import replace

        self.seq += 1
        self.sock.send_multipart(encode(replace(env, seq=self.seq)), copy=False)

    def recv(self, timeout_s: float = 20.0) -> Envelope | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return decode(self.sock.recv_multipart(), max_bytes=64 * MIB)

    def hello(self) -> list[Envelope]:
        """Say hello; every reply up to the WELCOME."""
        self.send(Envelope(type=MessageType.HELLO, body=HELLO))
        got = []
        while True:
            env = self.recv()
            assert env is not None, f"no WELCOME; got {[(e.type, e.body) for e in got]}"
            got.append(env)
            if env.type == MessageType.WELCOME:
                return got

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def _peak_during(pid: int, attack) -> tuple[int, object]:
    base = _reset_peak(pid)
    result = attack()
    time.sleep(0.5)  # let the daemon finish with what arrived
    return _status(pid)["VmHWM"] - base, result


def test_frames_past_the_limit_are_refused_before_they_are_buffered(federation_factory):
    fed = federation_factory(max_message_mb=LIMIT_MB)
    rogue = fed.add_agent("rogue", seed=1)
    daemon = fed.start_coordinator()
    keys = read_keypair(rogue / "keys" / "agent.key_secret")
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    store = fed.store()
    try:
        fed.wait_for("the daemon to serve",
                     lambda: (json.loads(store.get_meta("daemon") or "null") or {}).get("state") == "serving")
    finally:
        store.close()
    peer = Peer(fed.endpoint, keys, server)
    try:
        peer.hello()  # torch loads at the first hello: measure after it
        pid = daemon.pid
        chunk = np.ones(MIB, np.uint8)
        figures = {}

        # 1. one message of 9 x 3 MiB frames (27 MiB, under the watchdog's 30 MiB budget): answered too_large
        def just_over():
            frames = [peer.header("update", job="nojob", tensors=[[f"t{i}", "uint8", [3 * MIB]] for i in range(9)])]
            frames += [np.ones(3 * MIB, np.uint8)] * 9
            peer.sock.send_multipart(frames, copy=False)
            return peer.recv()
        figures["just_over"], err = _peak_during(pid, just_over)
        assert err is not None and err.body["code"] == "too_large", err

        # 2. one message of 1 GiB in 1 MiB frames: the watchdog closes the connection near 30 MiB unread
        def flood():
            peer.sock.send(peer.header("update", job="nojob", tensors=[["big", "uint8", [1024 * MIB]]]), zmq.SNDMORE)
            for i in range(1024):
                peer.sock.send(chunk, zmq.SNDMORE if i < 1023 else 0, copy=False)
            return peer.hello()  # the DEALER reconnects by itself; the key is told why the old connection closed
        figures["flood"], replies = _peak_during(pid, flood)
        assert replies[0].type == MessageType.ERROR and replies[0].body["code"] == "too_large", replies
        assert "earlier connection" in replies[0].body["message"]

        # 3. one 256 MiB frame: ZMQ_MAXMSGSIZE (30 MiB) makes libzmq close the connection at the frame's header
        def one_frame():
            peer.sock.send_multipart([peer.header("update", job="nojob", tensors=[["big", "uint8", [256 * MIB]]]),
                                      np.ones(256 * MIB, np.uint8)], copy=False)
            time.sleep(1.0)
            return peer.hello()
        figures["one_frame"], _ = _peak_during(pid, one_frame)

        # 4. a valid 20 MiB UPDATE (two parts) with no job running: out_of_order from its header alone
        def no_job():
            peer.send(Envelope(type=MessageType.UPDATE, job="nojob", round=1, body={"num_samples": 1},
                               tensors={"w": np.ones(20 * MIB // 4, np.float32)}))
            return peer.recv()
        figures["no_job"], err = _peak_during(pid, no_job)
        assert err is not None and err.body["code"] == "out_of_order", err
        assert "were not decoded" in err.body["message"]

        print({k: f"+{v / MIB:.1f} MiB" for k, v in figures.items()}, f"bound +{BOUND / MIB:.1f} MiB")
        for what, grew in figures.items():
            assert grew <= BOUND, f"{what}: the daemon's peak RSS grew by {grew / MIB:.1f} MiB > {BOUND / MIB:.1f} MiB"
        # the daemon keeps serving: this peer again, and the operator's status
        assert peer.hello()[-1].type == MessageType.WELCOME
        assert daemon.poll() is None
        assert fed.status()
    finally:
        peer.close()
    log = fed.log("coordinator")
    assert "closed the connection from 127.0.0.1" in log and "over the budget of 30.0 MiB" in log, log[-3000:]
    assert "Traceback" not in log
