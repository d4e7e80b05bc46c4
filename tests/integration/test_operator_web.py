"""The operator's view of a real federation: the status page in headless Chromium, /metrics, the job queue, and a
backup taken during a running job that restores to a coordinator which resumes the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.slow]

A_ROUNDS = 6
PRIVACY = "[privacy]\nnoise_multiplier = 1.0\nmax_grad_norm = 1.0\ndelta = 1e-5\n"


def _outside_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else addr


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _chromium(tmp, url: str, *args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed (make system-deps installs it)"
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp}/chromium-profile", "--window-size=1280,1800", *args, url],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_status_page_metrics_queue_and_backup_during_a_job(federation, tmp_path):
    fed = federation
    outside = _outside_address()
    cfg = (fed.coord_dir / "coordinator.toml")
    cfg.write_text(cfg.read_text().replace(f'bind = "127.0.0.1:{fed.web_port}"', f'bind = "0.0.0.0:{fed.web_port}"'))
    token = fed.coordinator("web-token").strip().splitlines()[-1].removeprefix("Authorization: Bearer ")
    names = ["st-mary", "royal-free"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    # job A is long enough that the backup CLI (seconds to start on a loaded machine) lands inside it
    job_a = fed.submit(rounds=A_ROUNDS, min_agents=2, extra=PRIVACY)
    job_b = fed.submit(rounds=1, min_agents=2)

    # a backup while job A runs (after its first round, before its last)
    store = fed.store()
    fed.wait_for("job A round 1", lambda: len(store.rounds(job_a)) >= 1, timeout=60, every=0.05)
    out = fed.coordinator("backup", str(tmp_path / "bk"))
    assert "backed up" in out
    backed_rounds = json.loads((tmp_path / "bk" / "manifest.json").read_text())["rounds"]
    assert 1 <= backed_rounds < A_ROUNDS
    # queued jobs run one after another: B starts only once A is finished
    assert fed.wait_job(job_a, timeout=60).status == "done"
    assert fed.wait_job(job_b, timeout=60).status == "done"
    a, b = store.job(job_a), store.job(job_b)
    assert a.finished_at is not None and b.started_at is not None and b.started_at >= a.finished_at

    base = f"http://127.0.0.1:{fed.web_port}"
    status, body = _get(base + "/metrics")
    assert status == 200
    m = _metrics(body.decode())
    p = "medfl_coordinator_"
    assert m[(p + "rounds_stored", ())] == len(store.rounds(job_a)) + len(store.rounds(job_b)) == A_ROUNDS + 1
    assert m[(p + "jobs", (("status", "done"),))] == len(store.jobs(status="done")) == 2
    assert m[(p + "queue_length", ())] == len(store.jobs(status="queued")) == 0
    assert m[(p + "nodes", (("status", "approved"),))] == store.count_nodes("approved") == 2
    assert m[(p + "agents_online", ())] == 2
    assert m[(p + "rounds_total", ())] == A_ROUNDS + 1
    assert m[(p + "round_duration_seconds_count", ())] == A_ROUNDS + 1
    assert m[(p + "round_duration_seconds_sum", ())] == pytest.approx(
        sum(r.seconds for j in (job_a, job_b) for r in store.rounds(j)), rel=1e-6)
    assert m[(p + "received_bytes_total", ())] > 0 and m[(p + "sent_bytes_total", ())] > 0

    # the page, rendered by a real browser: nodes and the job's rounds are in the DOM
    dom = _chromium(tmp_path, base + "/", "--dump-dom")
    for n in names:
        assert n in dom
    for node in store.nodes():
        assert node.fingerprint in dom
    assert job_a in dom and dom.count("<svg") >= 3 and "epsilon per hospital" in dom
    for r in store.rounds(job_a):
        assert f"<td>{r.round}</td><td>2</td>" in dom
    shot = tmp_path / "status-page.png"
    _chromium(tmp_path, base + "/", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("MEDFL_SAVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["MEDFL_SAVE_SCREENSHOT"])

    # from an address that is not loopback: refused without the token, served with it
    if outside is not None:
        far = f"http://{outside}:{fed.web_port}"
        for path in ("/", "/metrics", "/status.json"):
            status, body = _get(far + path)
            assert status == 401 and b"st-mary" not in body
        assert _get(far + "/", "not-the-token")[0] == 401
        status, body = _get(far + "/", token)
        assert status == 200 and b"st-mary" in body
        assert "refused GET / from" in fed.log("coordinator")

    # restore the backup taken mid-job: the coordinator resumes job A after the backed-up round
    store.close()
    fed.kill("coordinator", signal.SIGTERM)
    proc = fed.run_cli("coordinator.cli", "restore", str(tmp_path / "bk"), "--config", fed.ccfg, check=False)
    assert proc.returncode != 0 and "not empty" in proc.stderr and "--force" in proc.stderr
    fed.coordinator("restore", str(tmp_path / "bk"), "--force")
    store = fed.store()
    try:
        assert store.job(job_a).status == "running" and len(store.rounds(job_a)) == backed_rounds
        fed.start_coordinator()
        assert fed.wait_job(job_a, timeout=60).status == "done"
        assert [r.round for r in store.rounds(job_a)] == list(range(1, A_ROUNDS + 1))
        assert any(e["kind"] == "resumed" and f"after round {backed_rounds}" in e["detail"]
                   for e in store.events(job_a, limit=100))
    finally:
        store.close()
