"""Coverage-guided fuzzing in CI: every target of benchmarks/fuzz runs under atheris for at least 60 s, no crash.

All targets run at once (about 2 minutes of wall time in all). ``MEDFL_FUZZ_SECONDS`` sets the
seconds per target (CI keeps the default of 60; ``make fuzz`` runs 300). Deselect locally with
``-m "not fuzz"``. A crash prints the site and the saved input; turn it into a regression test in
tests/fuzz/test_regressions.py and fix the decoder.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris is in the test extra: pip install atheris")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("MEDFL_FUZZ_SECONDS", "60"))


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 540)
def test_every_fuzz_target_runs_its_time_without_a_crash(tmp_path):
    from benchmarks.fuzz.targets import TARGETS

    report = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz" / "run.py"), "--seconds", str(SECONDS),
                           "--out", str(tmp_path / "out"), "--json", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 480)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    results = {r["target"]: r for r in json.loads(report.read_text())["targets"]}
    assert set(results) == set(TARGETS)
    for name, r in results.items():
        assert r["crashes"] == 0 and not r["artifacts"], (name, r)
        assert r["seconds"] >= SECONDS, (name, r["seconds"])
        assert r["executions"] >= 1000, (name, r["executions"])  # it fuzzed, not just started
