"""Issue 24, the operator's first hour: each stumble run as the real command in a temporary folder.

Items 1 (where the config is looked for; exit trailers that fit), 3 (fingerprint typos),
4 (names in ``nodes list``), 9 (when an approved agent comes back) and 10 (final AUC and
epsilon in ``status``).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import REPO, Federation

CONFIG_TRAILER = "fix the configuration problems listed above"


def _run(module: str, *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("MEDFL_COORDINATOR_CONFIG", "MEDFL_AGENT_CONFIG")}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, **(env or {})}, timeout=120)


def test_commands_run_elsewhere_say_where_they_looked(tmp_path):
    """Item 1: no ./coordinator.toml -> every place tried, --config and the variable named, exit 10."""
    _run("coordinator.cli", "init", "--dir", str(tmp_path / "coord"), "--bind", "tcp://127.0.0.1:1", cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cmd in (["nodes", "list"], ["jobs", "list"], ["status"]):
        proc = _run("coordinator.cli", *cmd, cwd=elsewhere)
        assert proc.returncode == 10, proc.stderr
        err = proc.stderr
        assert "no coordinator.toml found" in err and "--config PATH" in err, err
        assert "$MEDFL_COORDINATOR_CONFIG: not set" in err and "/etc/medfl/coordinator.toml" in err, err
        assert str(elsewhere / "coordinator.toml") in err and CONFIG_TRAILER not in err, err
        assert "fix the configuration keys" not in err
    # the variable, then ./coordinator.toml, are used
    cfg = tmp_path / "coord" / "coordinator.toml"
    proc = _run("coordinator.cli", "status", cwd=elsewhere, env={"MEDFL_COORDINATOR_CONFIG": str(cfg)})
    assert proc.returncode == 0 and "daemon: never started" in proc.stdout, proc.stderr
    assert _run("coordinator.cli", "nodes", "list", cwd=tmp_path / "coord").returncode == 0
    # a variable or flag naming a missing file is an error, never a silent fall-through
    proc = _run("coordinator.cli", "status", cwd=tmp_path / "coord",
                env={"MEDFL_COORDINATOR_CONFIG": str(tmp_path / "typo.toml")})
    assert proc.returncode == 10 and f"MEDFL_COORDINATOR_CONFIG={tmp_path / 'typo.toml'}: no such file" in proc.stderr
    proc = _run("coordinator.cli", "nodes", "list", "--config", "nope.toml", cwd=elsewhere)
    assert proc.returncode == 10 and "--config nope.toml: no such file" in proc.stderr, proc.stderr
    assert "$MEDFL_COORDINATOR_CONFIG" in _run("coordinator.cli", "status", "--help", cwd=elsewhere).stdout
    # the agent, the same way
    proc = _run("agent.cli", "check", cwd=elsewhere)
    assert proc.returncode == 10, proc.stderr
    assert "no agent.toml found" in proc.stderr and "MEDFL_AGENT_CONFIG" in proc.stderr
    assert "/etc/medfl/agent.toml" in proc.stderr and CONFIG_TRAILER not in proc.stderr


def test_unreadable_images_and_bad_keys_get_fitting_trailers(tmp_path):
    """Item 1: an unreadable image leaves with exit 11 (data), a bad key with exit 3 (keys listed)."""
    from medfl.data.synthetic import write_image_folder

    _run("coordinator.cli", "init", "--dir", str(tmp_path / "coord"), cwd=tmp_path)
    data = write_image_folder(tmp_path / "data", n_train=6, n_val=4, n_test=0, seed=0, image_size=16)
    (data / "train" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    _run("agent.cli", "init", "--dir", str(tmp_path / "h1"), "--name", "h1", "--coordinator", "tcp://127.0.0.1:1",
         "--coordinator-key", str(tmp_path / "coord" / "keys" / "coordinator.key"), "--data", str(data),
         cwd=tmp_path)
    proc = _run("agent.cli", "check", cwd=tmp_path, env={"MEDFL_AGENT_CONFIG": str(tmp_path / "h1" / "agent.toml")})
    assert proc.returncode == 11, proc.stderr
    assert "broken.png" in proc.stderr and "[exit 11: a data set or image" in proc.stderr
    assert CONFIG_TRAILER not in proc.stderr and "configuration keys" not in proc.stderr
    cfg = tmp_path / "coord" / "coordinator.toml"
    cfg.write_text(cfg.read_text().replace("max_message_mb = 256", "max_message_mb = 0"))
    proc = _run("coordinator.cli", "status", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 3 and "transport.max_message_mb" in proc.stderr and CONFIG_TRAILER in proc.stderr


@pytest.mark.integration
def test_pending_agent_typos_names_and_when_it_comes_back(tmp_path):
    """Items 3, 4 and 9 against a real daemon and a real agent that is refused, then approved."""
    from medfl.wire.messages import REFUSED_RETRY_MAX_S

    fed = Federation(tmp_path / "fed")
    try:
        early = fed.add_agent("early", n_train=8, n_val=4, approve=False)
        fed.coordinator("nodes", "approve", str(early / "keys" / "agent.key"), "--name", "Early Hospital")
        fed.add_agent("late", n_train=8, n_val=4, approve=False)
        fresh = fed.add_agent("fresh", n_train=8, n_val=4, approve=False)
        fed.coordinator("nodes", "approve", str(fresh / "keys" / "agent.key"))
        listing = fed.coordinator("nodes", "list")
        assert re.search(r"approved\s+Early Hospital\s+-\s+SHA256:\S+\s+never connected", listing), listing
        assert re.search(r"approved\s+\(not connected yet\)\s+-\s+SHA256:\S+\s+never connected", listing), listing
        fed.start_coordinator()
        fed.start_agent("late")
        store = fed.store()
        try:
            pending = fed.wait_for("the late agent to be refused",
                                   lambda: [n for n in store.nodes() if n.status == "pending" and n.refusals], 60)
        finally:
            store.close()
        fp = pending[0].fingerprint
        assert fp == fed.run_cli("agent.cli", "fingerprint", "--config", str(fed.root / "late" / "agent.toml")
                                 ).stdout.strip()
        listing = fed.coordinator("nodes", "list")
        pending_row = (rf"pending\s+\(pending: not approved\)\s+\S+\s+{re.escape(fp)}"
                       r"\s+refused \d+ times?, last \d+ s ago")
        assert re.search(pending_row, listing), listing
        assert f"retries at most every {REFUSED_RETRY_MAX_S:.0f} s" in listing
        # item 3: truncated -> malformed, with the form; one character off -> refused, nothing to copy
        proc = fed.run_cli("coordinator.cli", "nodes", "approve", fp[:-3], "--config", fed.ccfg, check=False)
        assert proc.returncode == 4 and "malformed fingerprint" in proc.stderr, proc.stderr
        assert "43 base64 characters" in proc.stderr and fp not in proc.stderr
        typo = fp[:10] + ("A" if fp[10] != "A" else "B") + fp[11:]
        proc = fed.run_cli("coordinator.cli", "nodes", "approve", typo, "--config", fed.ccfg, check=False)
        assert proc.returncode == 4 and "no agent with fingerprint" in proc.stderr, proc.stderr
        assert fp not in proc.stderr and "SHA256:" not in proc.stderr.replace(typo, "")
        assert "nodes list" in proc.stderr and "from the hospital" in proc.stderr
        assert "never copy it from this machine" in proc.stderr
        assert "did you mean" not in proc.stderr.lower()
        # item 9: approval says when it comes, and it does come within the agent's back-off cap
        out = fed.coordinator("nodes", "approve", fp)
        assert f"retries at most every {REFUSED_RETRY_MAX_S:.0f} s" in out and "will connect within about" in out
        approved_at = time.monotonic()
        fed.wait_online(1, timeout=REFUSED_RETRY_MAX_S + 10)
        assert time.monotonic() - approved_at <= REFUSED_RETRY_MAX_S + 10
        listing = fed.coordinator("nodes", "list")
        assert re.search(rf"approved\s+late\s+\S+\s+{re.escape(fp)}\s+online now", listing), listing
    finally:
        fed.close()


def test_agent_backoff_is_the_constant_approve_quotes():
    """Item 9: the agent's back-off cap after a refused handshake is the one ``nodes approve`` prints."""
    from agent.service import MAX_BACKOFF_S
    from medfl.wire.messages import REFUSED_RETRY_MAX_S

    assert MAX_BACKOFF_S == REFUSED_RETRY_MAX_S <= 16


def test_status_gives_final_auc_and_epsilon(tmp_path):
    """Item 10: ``status --json`` and ``status`` carry each job's final val AUC, epsilon and delta."""
    from coordinator.store import RoundRow, Store

    _run("coordinator.cli", "init", "--dir", str(tmp_path / "coord"), cwd=tmp_path)
    store = Store(tmp_path / "coord" / "state" / "coordinator.sqlite")
    try:
        dp = store.submit_job({"job": {"name": "dp", "rounds": 2}})
        plain = store.submit_job({"job": {"name": "plain", "rounds": 2}})
        store.submit_job({"job": {"name": "queued", "rounds": 2}})
        for r, (auc, eps) in enumerate([(0.61, 0.8), (0.74, 1.25)], start=1):
            store.record_round(RoundRow(job_id=dp.id, round=r, attempts=1, agents=2, agent_names=("a", "b"),
                                        num_samples=20, train_loss=0.5, val_auc=auc, val_accuracy=0.7, val_loss=0.6,
                                        val_samples=8, seconds=1.0, finished_at=time.time(), checkpoint="x",
                                        epsilon=eps, delta=1e-5, epsilons={"a": eps, "b": eps / 2}))
        store.record_round(RoundRow(job_id=plain.id, round=1, attempts=1, agents=2, agent_names=("a", "b"),
                                    num_samples=20, train_loss=0.5, val_auc=0.9, val_accuracy=0.8, val_loss=0.3,
                                    val_samples=8, seconds=1.0, finished_at=time.time(), checkpoint="y"))
    finally:
        store.close()
    env = {"MEDFL_COORDINATOR_CONFIG": str(tmp_path / "coord" / "coordinator.toml")}
    proc = _run("coordinator.cli", "status", "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    jobs = {j["name"]: j for j in json.loads(proc.stdout)["jobs"]}
    assert (jobs["dp"]["final_val_auc"], jobs["dp"]["final_epsilon"], jobs["dp"]["delta"]) == (0.74, 1.25, 1e-5)
    assert (jobs["plain"]["final_val_auc"], jobs["plain"]["final_epsilon"], jobs["plain"]["delta"]) == (0.9, None, None)
    assert (jobs["queued"]["final_val_auc"], jobs["queued"]["final_epsilon"]) == (None, None)
    text = _run("coordinator.cli", "status", cwd=tmp_path, env=env).stdout
    assert "final (round 2): val_auc 0.7400, epsilon 1.250 at delta 1e-05" in text, text
    assert "final (round 1): val_auc 0.9000, no differential privacy" in text, text
    help_text = _run("coordinator.cli", "status", "--help", cwd=tmp_path).stdout
    assert "final_val_auc" in help_text and "final_epsilon" in help_text
