"""`medfl demo` end to end, small: real daemons, CURVE, the table, the PNG and the JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_and_writes_its_summary(tmp_path):
    out = tmp_path / "demo"
    summary_path = tmp_path / "summary.json"
    env = dict(os.environ, MEDFL_TORCH_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "apps.cli", "demo", "--agents", "2", "--rounds", "2", "--out", str(out),
         "--json", str(summary_path), "--train-per-agent", "64", "--val-per-agent", "32", "--image-size", "32",
         "--no-progress"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["transport"] == "zmq+curve" and summary["status"] == "done"
    assert summary["aggregation"] == "secagg"  # secure aggregation is the default
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["agents"] == 2 and 0 <= r["val_auc"] <= 1 and r["seconds"] > 0 for r in summary["rounds"])
    assert summary["final_val_auc"] == summary["rounds"][-1]["val_auc"]
    assert os.path.exists(summary["checkpoint"]) and os.path.getsize(summary["plot"]) > 10_000
    assert "round agents  val_auc" in proc.stdout and "with secagg aggregation" in proc.stdout
    # differential privacy is on by default: epsilon per round, growing, at the summary's delta
    assert summary["privacy"]["enabled"] and summary["delta"] == 1e-5
    eps = [r["epsilon"] for r in summary["rounds"]]
    assert all(e is not None and e > 0 for e in eps) and eps[1] > eps[0]
    assert summary["final_epsilon"] == eps[-1] and set(summary["rounds"][0]["epsilons"]) == set(summary["agents"])
    assert "eps@1e-05" in proc.stdout and "differential privacy: DP-SGD" in proc.stdout
    # the demo ends with encrypted inference of two validation images on the model it trained
    enc = summary["encrypted_inference"]
    assert "error" not in enc, enc
    assert enc["images"] == 2 and enc["decisions_agree"] is True and enc["max_abs_diff"] < 5e-2
    assert enc["seconds_per_image"] > 0 and enc["bytes_per_image"] > 0 and enc["rounds_per_image"] > 0
    assert "encrypted inference of 2 validation image(s)" in proc.stdout
    # a second run replaces the folder it made, but refuses to touch a folder it did not make
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--out", str(foreign), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0 and "was not made by 'medfl demo'" in proc.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"
