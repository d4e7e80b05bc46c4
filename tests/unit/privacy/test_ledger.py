"""The privacy ledger: durable across a SIGKILL, per-job and per-dataset budgets from its runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from medfl.errors import StateError
from medfl.privacy.accountant import SgdRun, epsilon
from medfl.privacy.ledger import Ledger, LedgerEntry, dataset_key


def _entry(dataset="folder:/data/a", job="job-1", rnd=1, run=SgdRun(0.1, 1.0, 20), **kw):
    return LedgerEntry(dataset=dataset, job_id=job, round=rnd, run=run, max_grad_norm=1.0, delta=1e-5,
                       accountant="rdp", epsilon=epsilon([run], delta=1e-5), **kw)


def test_entries_round_trip_and_budgets_compose():
    led = Ledger(":memory:")
    a, b = "folder:/data/a", "folder:/data/b"
    led.record(_entry(a, "job-1", 1, SgdRun(0.1, 1.0, 20)))
    led.record(_entry(a, "job-1", 2, SgdRun(0.1, 1.0, 20), attempt=2))
    led.record(_entry(a, "job-2", 1, SgdRun(0.05, 2.0, 40)))
    led.record(_entry(b, "job-1", 1, SgdRun(0.5, 0.8, 10)))
    got = led.entries(dataset=a, job_id="job-1")
    assert [(e.round, e.attempt, e.run) for e in got] == [(1, 1, SgdRun(0.1, 1.0, 20)), (2, 2, SgdRun(0.1, 1.0, 20))]
    job1 = led.job_epsilon(dataset=a, job_id="job-1", delta=1e-5)
    assert job1 == pytest.approx(epsilon([SgdRun(0.1, 1.0, 40)], delta=1e-5), rel=1e-12)
    total = led.dataset_epsilon(dataset=a, delta=1e-5)
    assert total == pytest.approx(epsilon([SgdRun(0.1, 1.0, 40), SgdRun(0.05, 2.0, 40)], delta=1e-5), rel=1e-12)
    assert total > job1 > 0
    # another dataset's spending does not count here, and an unknown one has spent nothing
    assert led.dataset_epsilon(dataset=b, delta=1e-5) == pytest.approx(epsilon([SgdRun(0.5, 0.8, 10)], delta=1e-5))
    assert led.dataset_epsilon(dataset="folder:/nowhere", delta=1e-5) == 0.0
    rows = led.summary(dataset=a)
    assert len(rows) == 3 and rows[0]["sample_rate"] == 0.1 and rows[2]["job_id"] == "job-2"
    led.close()


def test_a_recorded_entry_survives_sigkill(tmp_path):
    path = tmp_path / "state" / "privacy" / "ledger.sqlite"
    code = textwrap.dedent(f"""
        import os, sys, time
        from medfl.privacy.accountant import SgdRun
        from medfl.privacy.ledger import Ledger, LedgerEntry
        led = Ledger({str(path)!r})
        for r in (1, 2):
            led.record(LedgerEntry(dataset="d", job_id="j", round=r, run=SgdRun(0.1, 1.0, 5), max_grad_norm=1.0,
                                   delta=1e-5, accountant="rdp", epsilon=1.0))
        print("recorded", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "recorded"
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown, no close()
    finally:
        proc.wait(timeout=30)
    led = Ledger(path)
    assert [e.round for e in led.entries(dataset="d")] == [1, 2]
    led.record(_entry("d", "j", 3))
    led.close()
    assert len(Ledger(path).entries(job_id="j")) == 3


def test_corrupt_ledger_is_a_clear_error_not_a_fresh_budget(tmp_path):
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="Do not delete it"):
        Ledger(path)


def test_dataset_key_is_the_resolved_path(tmp_path):
    (tmp_path / "data").mkdir()
    assert dataset_key("folder", tmp_path / "x" / ".." / "data") == f"folder:{(tmp_path / 'data').resolve()}"
    assert dataset_key("npz", tmp_path / "data") != dataset_key("folder", tmp_path / "data")


def test_unknown_accountant_is_refused():
    led = Ledger(":memory:")
    bad = LedgerEntry(dataset="d", job_id="j", round=1, run=SgdRun(0.1, 1.0, 1), max_grad_norm=1.0, delta=1e-5,
                      accountant="moments", epsilon=1.0)
    with pytest.raises(KeyError, match="unknown accountant"):
        led.record(bad)
    assert led.entries() == []
