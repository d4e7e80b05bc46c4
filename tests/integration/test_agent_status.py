"""Hospital IT's view of a real agent (issue #18 item 5): ``medfl-agent status`` reads what the running daemon
writes, ``medfl-agent doctor`` checks keys, disk, clock and the coordinator, each failure with its fix."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _agent(fed, cmd: str, *extra: str):
    return fed.run_cli("agent.cli", cmd, "--config", str(fed.root / "h1" / "agent.toml"), *extra, check=False)


def test_status_and_doctor_against_a_real_coordinator(federation):
    fed = federation
    folder = fed.add_agent("h1", seed=0)
    fed.start_coordinator()
    fed.wait_for("the daemon", lambda: "listening on" in fed.log("coordinator"), timeout=60)

    before = _agent(fed, "status")
    assert before.returncode == 0 and "daemon: not running" in before.stdout, before.stdout + before.stderr
    doc = _agent(fed, "doctor")
    assert doc.returncode == 0, doc.stdout + doc.stderr
    assert "[ok  ] coordinator: " + fed.endpoint + " reachable; it admits this agent's key" in doc.stdout
    assert "[ok  ] secret key mode" in doc.stdout and "clock: not measured" in doc.stdout

    fed.start_agent("h1")
    fed.wait_online(1)
    fed.wait_for("the status file", lambda: "welcomed" in _agent(fed, "status").stdout, timeout=30)
    st = json.loads(_agent(fed, "status", "--json").stdout)
    d = st["daemon"]
    assert d["welcomed"] and d["coordinator"] == "coordinator" and d["coordinator_version"] == st["version"]
    assert abs(d["clock_skew_s"]) < 5 and st["privacy"]["epsilon_spent"] == 0.0
    assert st["fingerprint"].startswith("SHA256:") and st["policy"]["require_secure_aggregation"] is True
    text = _agent(fed, "status").stdout
    assert "connected and welcomed to coordinator" in text and "clock: " in text and "last model: none yet" in text
    assert "[ok  ] clock: " in _agent(fed, "doctor").stdout

    # the attacker's and the accident's side: a readable secret key, a revoked key, a wrong pinned key
    secret = folder / "keys" / "agent.key_secret"
    os.chmod(secret, 0o644)
    bad = _agent(fed, "doctor")
    assert bad.returncode == 1 and f"fix: chmod 600 {secret}" in bad.stdout, bad.stdout + bad.stderr
    os.chmod(secret, 0o600)
    fp = st["fingerprint"]
    fed.coordinator("nodes", "revoke", fp)
    refused = _agent(fed, "doctor")
    assert refused.returncode == 1 and f"refused this agent's key {fp}" in refused.stdout, refused.stdout
    assert f"nodes approve {fp}" in refused.stdout
    fed.kill("h1")
    fed.wait_for("the status file to go stale", lambda: "daemon: not running" in _agent(fed, "status").stdout,
                 timeout=30)
