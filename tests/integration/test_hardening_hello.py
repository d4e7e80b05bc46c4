"""An approved key that lies in its HELLO: forged log lines, terminal escapes, huge or borrowed names
and wrong types are refused with typed errors, and nothing it sends reaches a log or terminal raw."""

from __future__ import annotations

import pytest

from medfl.wire import ClientChannel, Envelope, MessageType, read_keypair, read_public_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = {"version": "0.1.0", "models": ["cnn"], "min_parties": 2, "train_samples": 10, "val_samples": 4}


def _reply(chan: ClientChannel) -> Envelope:
    env = chan.recv(timeout_ms=15_000)
    assert env is not None, "no reply from the coordinator"
    return env


def _hello(chan: ClientChannel, **body) -> Envelope:
    chan.send(Envelope(type=MessageType.HELLO, body={**GOOD, **body}))
    return _reply(chan)


def test_lying_hellos_are_refused_and_never_printed_raw(federation):
    fed = federation
    fed.add_agent("legit-a", seed=0)
    rogue = fed.add_agent("rogue", seed=1)  # approved key, lying client
    fed.start_coordinator()
    fed.start_agent("legit-a")
    fed.wait_online(1)

    keys = read_keypair(rogue / "keys" / "agent.key_secret")
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    with ClientChannel(connect=fed.endpoint, keys=keys, server_public_key=server) as chan:
        forged = "x\n2026-12-07 INFO coordinator: agent admin approved"
        err = _hello(chan, name=forged)
        assert err.type == MessageType.ERROR and err.body["code"] == "malformed", err
        assert "printable" in err.body["message"]
        err = _hello(chan, name="\x1b[2J\x1b]0;owned\x07evil")
        assert err.body["code"] == "malformed"
        err = _hello(chan, name="\u202eevil")  # a bidi override reorders what the operator reads
        assert err.body["code"] == "malformed"
        err = _hello(chan, name="A" * 10_000)
        assert err.body["code"] == "malformed" and "at most 64" in err.body["message"]
        err = _hello(chan, name="rogue", train_samples="lots", models={"cnn": 1}, min_parties=-1)
        assert err.body["code"] == "malformed"
        for field in ("train_samples", "models", "min_parties"):
            assert field in err.body["message"], err.body["message"]
        err = _hello(chan, name="rogue", val_samples=True)  # a bool is not a count
        assert err.body["code"] == "malformed" and "val_samples" in err.body["message"]
        err = _hello(chan, name="ＬＥＧＩＴ-A")  # fullwidth, upper case: the same name after NFKC + casefold
        assert err.body["code"] == "rejected" and "already used" in err.body["message"], err
        # versions (issue #18 item 6): a newer minor, another major, none at all are refused by name
        from medfl import __version__
        from medfl.versions import parse_version

        major, minor, _ = parse_version(__version__)
        for version, says in ((f"{major}.{minor + 1}.0", "upgrades medfl-coordinator"),
                              (f"{major + 1}.0.0", "upgrades medfl-coordinator"), ("", "no usable version")):
            err = _hello(chan, name="rogue", version=version)
            assert err.body["code"] == "incompatible_version" and says in err.body["message"], err
        older = f"{major}.{max(0, minor - 1)}.9"  # one minor behind: still served
        ok = _hello(chan, name="rogue", version=older)
        assert ok.type == MessageType.WELCOME and ok.body["version"] == __version__, ok
        # after hello, its error reports are logged escaped
        chan.send(Envelope(type=MessageType.ERROR, body={"code": "x\x1b[31m", "message": "boom\nFAKE LINE"}))
        chan.send(Envelope(type=MessageType.HEARTBEAT))

    fed.wait_for("the error report in the log", lambda: "boom" in fed.log("coordinator"), timeout=20)
    log = fed.log("coordinator")
    assert "\x1b" not in log and "\u202e" not in log and "\x07" not in log
    assert "\nFAKE LINE" not in log and "boom\\nFAKE LINE" in log
    assert "\n2026-12-07 INFO coordinator: agent admin approved" not in log
    listing = fed.coordinator("nodes", "list")
    assert "\x1b" not in listing and "legit-a" in listing and "rogue" in listing
    assert "VERSION" in listing and older in listing  # the version of each node's last hello
    assert listing.lower().count("legit-a") == 1
    assert fed.procs["coordinator"].poll() is None, "the daemon must keep serving"


def test_a_second_connection_with_one_key_during_a_secure_round_counts_the_hospital_once(federation):
    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=2, min_agents=3, extra="[aggregation]\nsecure = true\nclip_norm = 100.0\n")

    store = fed.store()
    try:
        fed.wait_for("the secure job to start", lambda: store.job(job_id).status == "running", timeout=60, every=0.05)
    finally:
        store.close()
    keys = read_keypair(fed.root / "h-a" / "keys" / "agent.key_secret")
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    with ClientChannel(connect=fed.endpoint, keys=keys, server_public_key=server) as chan:
        ok = _hello(chan, name="h-a")  # the same key from a second connection, mid-job
        assert ok.type == MessageType.WELCOME, ok
    job = fed.wait_job(job_id, timeout=240)
    assert job.status in ("done", "failed"), job  # completes, or aborts cleanly with a reason
    store = fed.store()
    try:
        for r in store.rounds(job_id):
            members = r.agent_names.split(",") if isinstance(r.agent_names, str) else list(r.agent_names)
            assert len(members) == len(set(members)) and r.agents <= 3, r
    finally:
        store.close()
    log = fed.log("coordinator")
    assert "connected again from a new connection" in log and "takes over its session" in log
    assert fed.procs["coordinator"].poll() is None
