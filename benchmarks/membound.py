"""How much a receiving daemon buffers when an approved peer sends past the size limit, before and after.

A child process runs a :class:`~medfl.wire.ServerChannel` (CurveZMQ, the client's key approved)
with the coordinator's rule for tensors of no running job (an UPDATE is refused from its header),
and this process attacks it with a raw DEALER. For each attack the child's peak resident set
(VmHWM, reset through /proc/<pid>/clear_refs) is compared with its resident set before it.

``--mode before`` reproduces the old socket settings (ZMQ_MAXMSGSIZE at twice the limit, HWMs of
1000, no watchdog, tensors decoded before the stage check); ``--mode after`` is today's; ``both``
(default) runs one after the other and prints them side by side.

Run: ``PYTHONPATH=. python benchmarks/membound.py [--limit-mb 64] [--flood-mb 1024]``
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

import msgpack
import numpy as np
import zmq

MIB = 2**20


def _serve(argv: list[str]) -> None:
    """The child: serve until stdin closes; UPDATE is refused (no job runs)."""
    import logging

    from medfl.errors import OutOfOrder
    from medfl.wire import Envelope, Incoming, KeyPair, MessageType, ServerChannel, SocketLimits

    logging.basicConfig(level=logging.ERROR)
    limit_mb, mode, public, secret, client = int(argv[0]), argv[1], argv[2], argv[3], argv[4].encode()
    limit = limit_mb * MIB
    if mode == "before":
        limits = SocketLimits(max_message_bytes=limit, hard_limit_bytes=2 * limit, hwm=1000, guard=False)
    else:
        limits = SocketLimits(max_message_bytes=limit)

    def admit(inc: Incoming, nbytes: int) -> None:
        if inc.envelope.type == MessageType.UPDATE:
            raise OutOfOrder(f"update but no job is running; {nbytes} bytes not decoded")

    chan = ServerChannel(bind="tcp://127.0.0.1:0", keys=KeyPair(public=public.encode(), secret=secret.encode()),
                         is_allowed=lambda k: bytes(k) == client, limits=limits,
                         admit=admit if mode == "after" else None)
    print(chan.endpoint, flush=True)
    import select

    kept = []  # "before": a decoded tensor is kept until the stage check, as the old service did
    while not select.select([sys.stdin], [], [], 0)[0]:
        if chan.poll(50):
            inc = chan.recv()
            if inc is None:
                continue
            if inc.envelope.type == MessageType.UPDATE:
                kept = [np.array(t) for t in inc.envelope.tensors.values()]  # what decoding and pooling cost
                chan.send(inc.peer, Envelope(type=MessageType.ERROR, body={"code": "out_of_order"}))
                kept.clear()
            else:
                chan.send(inc.peer, Envelope(type=MessageType.WELCOME, body={}))
    chan.close()


def _rss(pid: int) -> dict[str, int]:
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Attacker:
    """A raw DEALER with the approved key."""

    def __init__(self, endpoint: str, keys, server_public: bytes):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey, self.sock.curve_publickey, self.sock.curve_serverkey = (
            keys.secret, keys.public, server_public)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.connect(endpoint)
        self.seq = time.time_ns() // 1000

    def header(self, mtype: str, tensors: list) -> bytes:
        self.seq += 1
        return msgpack.packb({"v": 2, "type": mtype, "job": "j", "round": 1, "seq": self.seq, "body": {},
                              "tensors": tensors})

    def reply(self, timeout_s: float) -> str:
        if not self.sock.poll(int(timeout_s * 1000)):
            return "no reply (connection closed)"
        from medfl.wire import decode

        env = decode(self.sock.recv_multipart(), max_bytes=64 * MIB)
        return str(env.body.get("code", env.type))

    def ping(self) -> list[str]:
        """Send a small message; every reply up to its WELCOME (an ERROR notice may come first)."""
        self.sock.send(self.header("heartbeat", []))
        got = [self.reply(20.0)]
        while got[-1] not in ("welcome", "no reply (connection closed)"):
            got.append(self.reply(20.0))
        return got


def _attacks(limit_mb: int, flood_mb: int) -> list[tuple[str, object]]:
    def one_frame(a: Attacker) -> str:
        a.sock.send_multipart([a.header("update", [["t", "uint8", [4 * limit_mb * MIB]]]),
                               np.ones(4 * limit_mb * MIB, np.uint8)], copy=False)
        return a.reply(3.0)

    def flood(a: Attacker) -> str:
        chunk = np.ones(MIB, np.uint8)
        a.sock.send_multipart([a.header("update", [["t", "uint8", [flood_mb * MIB]]])] + [chunk] * flood_mb,
                              copy=False)
        return a.reply(3.0 + flood_mb / 200)

    def frames_over(a: Attacker) -> str:
        n, size = 5, (limit_mb * MIB * 11 // 10) // 5  # 5 frames adding up to 1.1 x the limit
        a.sock.send_multipart([a.header("update", [[f"t{i}", "uint8", [size]] for i in range(n)])]
                              + [np.ones(size, np.uint8)] * n, copy=False)
        return a.reply(10.0)

    def update_no_job(a: Attacker) -> str:
        size = limit_mb * MIB * 15 // 16 // 4 * 4  # a valid UPDATE just under the limit, in parts
        from medfl.wire import Envelope, MessageType, encode

        a.seq += 1
        a.sock.send_multipart(encode(Envelope(type=MessageType.UPDATE, job="j", round=1, seq=a.seq,
                                              tensors={"w": np.ones(size // 4, np.float32)})), copy=False)
        return a.reply(10.0)

    return [(f"one {4 * limit_mb} MiB frame", one_frame), (f"{flood_mb} MiB of 1 MiB frames in one message", flood),
            (f"5 frames, {limit_mb * 1.1:.1f} MiB in one message", frames_over),
            (f"{limit_mb * 15 // 16} MiB UPDATE, no job running", update_no_job)]


def run(mode: str, limit_mb: int, flood_mb: int) -> list[tuple[str, float, float, str]]:
    """Each attack's (name, peak RSS growth MiB, RSS after MiB growth, reply) for one mode."""
    from medfl.wire import generate_keypair

    server, client = generate_keypair(), generate_keypair()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(limit_mb), mode, server.public.decode(),
                              server.secret.decode(), client.public.decode()],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        endpoint = child.stdout.readline().strip()
        a = Attacker(endpoint, client, server.public)
        a.ping()
        for name, attack in _attacks(limit_mb, flood_mb):
            pathlib.Path(f"/proc/{child.pid}/clear_refs").write_text("5")
            base = _rss(child.pid)["VmRSS"]
            reply = attack(a)
            time.sleep(0.5)
            after = _rss(child.pid)
            later = a.ping()  # the next attack starts on a live connection (the DEALER reconnects by itself)
            if reply.startswith("no reply") and later[0] != "welcome":
                reply = f"closed; then {later[0]}"
            rows.append((name, (after["VmHWM"] - base) / MIB, (after["VmRSS"] - base) / MIB, reply))
        a.sock.close(linger=0)
        a.ctx.term()
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    return rows


def main() -> None:
    """Print the figures of each mode side by side."""
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _serve(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("before", "after", "both"), default="both")
    ap.add_argument("--limit-mb", type=int, default=64)
    ap.add_argument("--flood-mb", type=int, default=1024)
    args = ap.parse_args()
    modes = ("before", "after") if args.mode == "both" else (args.mode,)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the child's refusals are expected; keep the table readable
    results = {m: run(m, args.limit_mb, args.flood_mb) for m in modes}
    print(f"receiving process, limit {args.limit_mb} MiB, CurveZMQ on loopback; peak = VmHWM growth, "
          "after = VmRSS growth 0.5 s later")
    head = f"{'attack':44s}" + "".join(f" | {m + ': peak / after / reply':48s}" for m in modes)
    print(head)
    print("-" * len(head))
    for i, (name, *_r) in enumerate(results[modes[0]]):
        cells = []
        for m in modes:
            _n, peak, after, reply = results[m][i]
            cells.append(f" | {f'+{peak:.1f} / +{after:.1f} MiB / {reply}':48s}")
        print(f"{name:44s}" + "".join(cells))


if __name__ == "__main__":
    main()
