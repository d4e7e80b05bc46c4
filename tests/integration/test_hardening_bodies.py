"""An approved agent that lies in its job messages: UPDATE, METRICS and JOB_REFUSE bodies of the wrong types
or out of range are refused with typed errors naming every bad field, and the daemon runs the job on."""

from __future__ import annotations

import math

import pytest

from medfl.wire import ClientChannel, Envelope, MessageType, read_keypair, read_public_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELLO = {"name": "rogue", "version": "0.1.0", "models": ["cnn"], "min_parties": 1, "train_samples": 10,
         "val_samples": 4}


def _next(chan: ClientChannel, *types: MessageType) -> Envelope:
    for _ in range(100):
        env = chan.recv(timeout_ms=30_000)
        assert env is not None, f"no {types} from the coordinator"
        if env.type in types:
            return env
    raise AssertionError(f"no {types}")


def _send(chan: ClientChannel, env: Envelope, mtype: MessageType, body: dict, tensors=None) -> None:
    chan.send(Envelope(type=mtype, job=env.job, round=env.round, body=body, tensors=tensors or {}))


def test_lying_job_messages_are_refused_and_the_job_runs_on(federation):
    fed = federation
    rogue = fed.add_agent("rogue", seed=1)
    fed.start_coordinator()
    keys = read_keypair(rogue / "keys" / "agent.key_secret")
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    with ClientChannel(connect=fed.endpoint, keys=keys, server_public_key=server) as chan:
        chan.send(Envelope(type=MessageType.HELLO, body=HELLO))
        _next(chan, MessageType.WELCOME)
        job = fed.submit(rounds=1, min_agents=1, extra="[aggregation]\nsecure = false\n")
        offer = _next(chan, MessageType.JOB_OFFER)
        _send(chan, offer, MessageType.JOB_REFUSE, {"reason": {"nested": 1}, "budget": "yes"})
        err = _next(chan, MessageType.ERROR)
        assert err.body["code"] == "malformed" and "reason" in err.body["message"] and "budget" in err.body["message"]
        _send(chan, offer, MessageType.JOB_ACCEPT, {})
        train = _next(chan, MessageType.TRAIN)
        weights = dict(train.tensors)
        _send(chan, train, MessageType.UPDATE, {"num_samples": "lots", "train_loss": "low", "epsilon": -1.0,
                                                "delta": 7, "seconds": math.inf}, weights)
        err = _next(chan, MessageType.ERROR)
        assert err.body["code"] == "malformed", err
        for field in ("num_samples", "train_loss", "epsilon", "delta", "seconds"):
            assert field in err.body["message"], err.body["message"]
        _send(chan, train, MessageType.UPDATE, {"num_samples": True}, weights)  # a bool is not a count
        assert "num_samples" in _next(chan, MessageType.ERROR).body["message"]
        _send(chan, train, MessageType.UPDATE, {"num_samples": 10, "train_loss": 0.5, "seconds": 1.0}, weights)
        evaluate = _next(chan, MessageType.EVALUATE)
        _send(chan, evaluate, MessageType.METRICS, {"n": -4, "auc": 3.0, "accuracy": "all", "loss": -1.0})
        err = _next(chan, MessageType.ERROR)
        for field in ("n", "auc", "accuracy", "loss"):
            assert f"{field} must" in err.body["message"], err.body["message"]
        _send(chan, evaluate, MessageType.METRICS, {"n": 4.0, "auc": 0.75, "accuracy": 0.5, "loss": 0.69})
        done = fed.wait_job(job, timeout=60)
        assert done.status == "done", done
    store = fed.store()
    try:
        row = store.rounds(job)[0]
    finally:
        store.close()
    assert row.num_samples == 10 and row.val_auc == 0.75 and row.val_samples == 4
    log = fed.log("coordinator")
    assert "Traceback" not in log and "internal error" not in log
    assert "malformed" in log
