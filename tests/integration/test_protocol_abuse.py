"""A running coordinator answers garbage, wrong versions and oversized messages with typed errors
and keeps serving the federation (an approved-key client behaving badly)."""

from __future__ import annotations

import msgpack
import pytest

from medfl.wire import ClientChannel, Envelope, MessageType, SocketLimits, read_keypair, read_public_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _recv_error(chan: ClientChannel, timeout_ms: int = 10_000) -> Envelope:
    env = chan.recv(timeout_ms=timeout_ms)
    assert env is not None, "no reply from the coordinator"
    assert env.type == MessageType.ERROR, env
    return env


def test_bad_frames_get_typed_errors_while_the_job_runs(federation_factory):
    fed = federation_factory(max_message_mb=1)
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i)
    rogue = fed.add_agent("rogue", seed=3)  # approved key, misbehaving client
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    job_id = fed.submit(rounds=2, min_agents=3)

    keys = read_keypair(rogue / "keys" / "agent.key_secret")
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    with ClientChannel(connect=fed.endpoint, keys=keys, server_public_key=server,
                       limits=SocketLimits(max_message_bytes=64 * 2**20)) as chan:
        # 1. random bytes
        chan.send_raw([b"\x00\xffnot msgpack at all\x13"])
        assert _recv_error(chan).body["code"] == "malformed"
        # 2. a well-formed header that speaks protocol version 99
        header = {"v": 99, "type": "hello", "job": None, "round": None, "seq": 1, "body": {}, "tensors": []}
        chan.send_raw([msgpack.packb(header)])
        err = _recv_error(chan)
        assert err.body["code"] == "unsupported_version"
        # 3. 1.2 MB where the coordinator allows 1 MiB (a frame past 1.25 MiB closes the connection instead)
        import numpy as np

        big = np.zeros(1_200_000 // 4, dtype=np.float32)
        chan.send(Envelope(type=MessageType.HEARTBEAT, tensors={"x": big}))
        assert _recv_error(chan).body["code"] == "too_large"
        # 4. a message that is valid but out of order: an UPDATE before hello
        chan.send(Envelope(type=MessageType.UPDATE, job=job_id, round=1, body={"num_samples": 1}))
        assert _recv_error(chan).body["code"] == "unknown_peer"

    job = fed.wait_job(job_id)
    assert job.status == "done", job.message
    log = fed.log("coordinator")
    assert "malformed" in log and "unsupported_version" in log and "too_large" in log
    assert fed.procs["coordinator"].poll() is None, "the daemon must keep running"
