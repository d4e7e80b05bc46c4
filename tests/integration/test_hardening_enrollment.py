"""A flood of handshakes from fresh keys against a real daemon: the database and the log grow by a bounded
amount, a real approved agent still gets in, and the operator can forget and prune what was recorded."""

from __future__ import annotations

import time

import pytest
import zmq

from medfl.wire import read_public_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = 1000


def _flood(endpoint: str, server_key: bytes, n: int, batch: int = 250) -> float:
    """``n`` CURVE handshakes, each from a fresh key, ``batch`` sockets at a time; returns the seconds taken."""
    ctx = zmq.Context()
    t0 = time.monotonic()
    try:
        for start in range(0, n, batch):
            socks = []
            for _ in range(min(batch, n - start)):
                pub, sec = zmq.curve_keypair()
                s = ctx.socket(zmq.DEALER)
                s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server_key, pub, sec
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RECONNECT_IVL, 10_000)  # one handshake per key
                s.connect(endpoint)
                socks.append(s)
            time.sleep(0.6)  # let the handshakes reach the ZAP handler
            for s in socks:
                s.close()
    finally:
        ctx.term()
    return time.monotonic() - t0


def _rows(fed, status=None):
    store = fed.store()
    try:
        return [n for n in store.nodes() if status is None or n.status == status]
    finally:
        store.close()


def test_a_burst_of_unknown_keys_is_bounded_and_the_real_agent_still_enrolls(federation):
    fed = federation
    fed.add_agent("legit", seed=0)
    fed.start_coordinator()
    fed.wait_for("the daemon", lambda: "listening on" in fed.log("coordinator"), timeout=60)
    db = fed.coord_dir / "state" / "coordinator.sqlite"
    log_before = len(fed.log("coordinator").splitlines())
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    seconds = _flood(fed.endpoint, server, BURST)
    time.sleep(1.0)
    pending = _rows(fed, "pending")
    # one source address: its bucket lets 4 new keys a minute be recorded (burst 4), the cap is 100
    assert 1 <= len(pending) <= 4 + int(seconds / 15) + 1, len(pending)
    lines = fed.log("coordinator").splitlines()[log_before:]
    assert len(lines) <= 12, "\n".join(lines)
    print(f"{BURST} handshakes in {seconds:.1f} s -> {len(pending)} pending rows, {len(lines)} log lines, "
          f"database {db.stat().st_size} bytes")
    fed.start_agent("legit")
    fed.wait_online(1)
    st = fed.coordinator("status")
    assert "legit" in st
    # the operator clears what the flood left
    fp = pending[0].fingerprint
    assert "forgot pending" in fed.coordinator("nodes", "forget", fp)
    out = fed.coordinator("nodes", "prune", "--older-than", "0s")
    assert f"pruned {len(pending) - 1} pending" in out, out
    assert _rows(fed, "pending") == [] and [n.status for n in _rows(fed)] == ["approved"]
    bad = fed.run_cli("coordinator.cli", "nodes", "prune", "--older-than", "soon", "--config", fed.ccfg, check=False)
    assert bad.returncode != 0 and "--older-than" in bad.stderr
    approved = _rows(fed, "approved")[0].fingerprint
    bad = fed.run_cli("coordinator.cli", "nodes", "forget", approved, "--config", fed.ccfg, check=False)
    assert bad.returncode != 0 and "revoke it first" in bad.stderr
    assert fed.procs["coordinator"].poll() is None


def test_invite_only_records_no_unknown_key(federation):
    fed = federation
    cfg = fed.coord_dir / "coordinator.toml"
    cfg.write_text(cfg.read_text() + '\n[enrollment]\nmode = "invite-only"\n')
    fed.add_agent("legit", seed=0)
    fed.start_coordinator()
    fed.wait_for("the daemon", lambda: "listening on" in fed.log("coordinator"), timeout=60)
    server = read_public_key(fed.coord_dir / "keys" / "coordinator.key")
    _flood(fed.endpoint, server, 200)
    assert _rows(fed, "pending") == []
    fed.start_agent("legit")
    fed.wait_online(1)
