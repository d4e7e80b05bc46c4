"""The operator's status page, metrics, web token and backup/restore, on a real store and real sockets."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.backup import backup, restore
from coordinator.metrics import CoordinatorMetrics
from coordinator.statelock import StateLock
from coordinator.statuspage import render_status
from coordinator.store import RoundRow, Store
from coordinator.web import StatusServer, read_token, write_token
from medfl.errors import StateError

EVIL = '<script>alert("x")</script>'


def _fill(store: Store, ckpt: pathlib.Path, *, rounds: int = 3) -> str:
    store.approve_node("SHA256:aa", "keyA", name="St Mary")
    store.approve_node("SHA256:bb", "keyB", name=EVIL)
    store.see_node("SHA256:cc", "keyC")
    job = store.submit_job({"job": {"name": "pneumonia", "rounds": 5}})
    store.set_job_status(job.id, "running")
    store.submit_job({"job": {"name": "queued-one", "rounds": 2}})
    for r in range(1, rounds + 1):
        path = ckpt / job.id / f"round-{r:04d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(1000 + r))
        store.record_round(RoundRow(job_id=job.id, round=r, attempts=1, agents=2, agent_names=("St Mary", EVIL),
                                    num_samples=96, train_loss=1.0 / r, val_auc=0.5 + 0.1 * r, val_accuracy=0.6,
                                    val_loss=0.9 / r, val_samples=64, seconds=1.5 * r, finished_at=time.time(),
                                    checkpoint=str(path), epsilon=0.5 * r, delta=1e-5,
                                    epsilons={"St Mary": 0.4 * r, EVIL: 0.5 * r}))
    store.event(job.id, "refused", f"{EVIL}: budget spent")
    store.set_meta("daemon", json.dumps({"state": "serving", "t": time.time(), "online": ["St Mary"],
                                         "run": f"job {job.id} round 4/5 attempt 1 fit", "waiting": ""}))
    return job.id


def test_page_shows_nodes_rounds_curves_and_escapes_stored_text(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    job_id = _fill(store, tmp_path / "ckpt")
    page = render_status(store, coordinator="fl<1>")
    assert "St Mary" in page and "SHA256:aa" in page and "SHA256:cc" in page
    assert EVIL not in page and "&lt;script&gt;" in page  # agent-written names never become markup
    assert "fl&lt;1&gt;" in page
    assert job_id in page and page.count("<svg") == 3  # AUC, loss, epsilon per hospital
    assert "epsilon per hospital" in page and "budget spent" in page and "queued-one" in page
    assert '<span class="on">online</span>' in page  # St Mary has a session


def _scrape(metrics: CoordinatorMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_agree_with_the_store(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    job_id = _fill(store, tmp_path / "ckpt")
    m = CoordinatorMetrics(store, lambda: 1)
    m.bytes_in.inc(1234)
    m.round_seconds.observe(4.0)
    got = _scrape(m)
    p = "medfl_coordinator_"
    assert got[(p + "agents_online", ())] == 1
    assert got[(p + "nodes", (("status", "approved"),))] == store.count_nodes("approved") == 2
    assert got[(p + "nodes", (("status", "pending"),))] == 1
    assert got[(p + "queue_length", ())] == len(store.jobs(status="queued")) == 1
    assert got[(p + "jobs", (("status", "running"),))] == 1
    assert got[(p + "rounds_stored", ())] == len(store.rounds(job_id)) == 3
    assert got[(p + "job_val_auc", (("job", job_id),))] == pytest.approx(store.rounds(job_id)[-1].val_auc)
    assert got[(p + "job_epsilon", (("job", job_id),))] == pytest.approx(1.5)
    assert got[(p + "received_bytes_total", ())] == 1234
    assert got[(p + "round_duration_seconds_count", ())] == 1


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (a client from it is not on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_web_token_loopback_free_others_need_the_bearer(tmp_path):
    store = Store(tmp_path / "c.sqlite")
    _fill(store, tmp_path / "ckpt")
    token_file = tmp_path / "web.token"
    token = write_token(token_file)
    assert token_file.stat().st_mode & 0o777 == 0o600 and read_token(token_file) == token
    outside = _outside_address()
    server = StatusServer(host="0.0.0.0", port=0, token=token, page=lambda: render_status(store, coordinator="c"),
                          status_json=lambda: {"ok": True}, metrics=lambda: b"m 1\n")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/")[0] == 200 and b"St Mary" in _get(base + "/")[1]
        assert _get(base + "/metrics") == (200, b"m 1\n")
        assert _get(base + "/", method="POST")[0] == 405
        assert _get(base + "/nope")[0] == 404
        if outside is None:
            pytest.skip("no non-loopback address on this machine")
        far = f"http://{outside}:{server.port}"
        for bad in (None, "wrong", token[:-1], token + "x"):
            status, body = _get(far + "/", bad)
            assert status == 401 and b"St Mary" not in body
        assert _get(far + "/metrics")[0] == 401
        assert _get(far + "/", token)[0] == 200
    finally:
        server.stop()
    token_file.chmod(0o644)
    with pytest.raises(StateError, match="chmod 600"):
        read_token(token_file)


def test_no_token_file_serves_loopback_only(tmp_path):
    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback address on this machine")
    server = StatusServer(host="0.0.0.0", port=0, token=None, page=lambda: "secret page",
                          status_json=dict, metrics=lambda: b"")
    server.start()
    try:
        assert _get(f"http://127.0.0.1:{server.port}/")[0] == 200
        assert _get(f"http://{outside}:{server.port}/", "anything")[0] == 401
    finally:
        server.stop()


def test_backup_restore_round_trip_verifies_and_refuses(tmp_path):
    state = tmp_path / "state"
    store = Store(state / "coordinator.sqlite")
    job_id = _fill(store, state / "checkpoints")
    res = backup(state, tmp_path / "bk")
    store.close()
    assert res.rounds == 3 and res.files == 1 + 3
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"coordinator.sqlite"} | {
        f"checkpoints/{job_id}/round-{r:04d}.safetensors" for r in (1, 2, 3)}
    with pytest.raises(StateError, match="not empty"):
        backup(state, tmp_path / "bk")
    with pytest.raises(StateError, match="not empty"):
        restore(tmp_path / "bk", state)
    new_state = tmp_path / "elsewhere" / "state"
    restore(tmp_path / "bk", new_state)
    again = Store(new_state / "coordinator.sqlite")
    rounds = again.rounds(job_id)
    assert [r.round for r in rounds] == [1, 2, 3] and again.job(job_id).status == "running"
    for r in rounds:  # checkpoint paths follow the restored folder, and the bytes are the backed-up ones
        assert pathlib.Path(r.checkpoint).is_relative_to(new_state.resolve())
        assert pathlib.Path(r.checkpoint).read_bytes() == (tmp_path / "bk" / "checkpoints" / job_id /
                                                             pathlib.Path(r.checkpoint).name).read_bytes()
    again.close()
    # a flipped byte in a checkpoint: refused before anything is written
    victim = tmp_path / "bk" / "checkpoints" / job_id / "round-0002.safetensors"
    data = bytearray(victim.read_bytes())
    data[10] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(StateError, match="round-0002.safetensors: SHA-256 differs"):
        restore(tmp_path / "bk", tmp_path / "third")
    assert not (tmp_path / "third").exists()


def test_restore_force_keeps_old_state_and_refuses_while_a_daemon_holds_the_lock(tmp_path):
    state = tmp_path / "state"
    store = Store(state / "coordinator.sqlite")
    _fill(store, state / "checkpoints")
    backup(state, tmp_path / "bk")
    store.close()
    with StateLock(state, purpose="medfl-coordinator serve"):
        with pytest.raises(StateError, match=r"in use by medfl-coordinator serve pid \d+"):
            restore(tmp_path / "bk", state, force=True)
        with pytest.raises(StateError, match="in use"):
            StateLock(state, purpose="medfl-coordinator serve").acquire()
    restore(tmp_path / "bk", state, force=True)
    assert len(list(tmp_path.glob("state.replaced-*"))) == 1
    assert sqlite3.connect(state / "coordinator.sqlite").execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 3


def test_json_log_lines_carry_ts_level_logger_msg_and_fields():
    import io
    import logging

    from medfl.logs import setup_logging

    buf = io.StringIO()
    setup_logging("coordinator", fmt="json", stream=buf)
    try:
        logging.getLogger("coordinator.service").info("job %s started", "j1", extra={"job": "j1", "round": 2})
        logging.getLogger("coordinator.web").warning('name "%s"', EVIL)
    finally:
        setup_logging("test", fmt="text")
    first, second = (json.loads(line) for line in buf.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "coordinator.service" and first["msg"] == "job j1 started"
    assert first["job"] == "j1" and first["round"] == 2 and first["ts"].endswith("Z")
    assert second["msg"] == f'name "{EVIL}"'  # one line, quotes and markup inside the JSON string
