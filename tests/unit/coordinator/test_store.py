"""The coordinator's SQLite store, run against the file and the in-memory twin."""

from __future__ import annotations

import pytest

from coordinator.store import RoundRow, Store
from medfl.errors import AuthError, NotFound, StateError

SPEC = {"job": {"name": "j", "rounds": 2}}


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    s = Store(":memory:" if request.param == "memory" else tmp_path / "state" / "c.sqlite")
    yield s
    s.close()


def test_nodes_pending_then_approved(store):
    row = store.see_node("SHA256:abc", "K" * 40)
    assert row.status == "pending"
    assert not store.is_approved("K" * 40)
    store.approve_node("SHA256:abc", name="h1")
    assert store.is_approved("K" * 40)
    assert store.node("SHA256:abc").name == "h1"
    store.set_node_name("SHA256:abc", "other")  # operator's name wins
    assert store.node("SHA256:abc").name == "h1"
    store.revoke_node("SHA256:abc")
    assert not store.is_approved("K" * 40)


def test_approve_unknown_fingerprint_needs_key(store):
    with pytest.raises(AuthError, match="public key file"):
        store.approve_node("SHA256:nobody")
    row = store.approve_node("SHA256:x", "P" * 40)
    assert row.status == "approved" and store.is_approved("P" * 40)
    with pytest.raises(NotFound):
        store.revoke_node("SHA256:missing")


def test_jobs_and_rounds(store):
    job = store.submit_job(SPEC)
    assert job.status == "queued" and job.spec == SPEC
    store.set_job_status(job.id, "running")
    row = RoundRow(job_id=job.id, round=1, attempts=1, agents=3, agent_names=("a", "b", "c"), num_samples=30,
                   train_loss=0.5, val_auc=0.9, val_accuracy=0.8, val_loss=0.4, val_samples=10, seconds=1.5,
                   finished_at=0.0, checkpoint="x")
    store.record_round(row)
    assert store.rounds(job.id) == [row]
    assert store.job(job.id).rounds_done == 1
    store.set_job_status(job.id, "done", "completed")
    assert store.job(job.id).finished_at is not None
    with pytest.raises(StateError, match="only queued or running"):
        store.cancel_job(job.id)
    with pytest.raises(NotFound, match="jobs list"):
        store.job("nope")
    assert [e["kind"] for e in store.events(job.id)] == ["submitted", "running", "round", "done"]


def test_file_store_survives_reopen(tmp_path):
    path = tmp_path / "c.sqlite"
    s = Store(path)
    job = s.submit_job(SPEC)
    s.close()
    s2 = Store(path)
    assert s2.job(job.id).name == "j"
    s2.close()


def test_corrupt_database_is_a_state_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="fresh folder"):
        Store(path)


def test_version_1_database_gains_the_privacy_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL, status TEXT NOT NULL,
            submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, rounds_done INTEGER NOT NULL DEFAULT 0,
            message TEXT NOT NULL DEFAULT '');
        CREATE TABLE rounds (job_id TEXT NOT NULL, round INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 1,
            agents INTEGER NOT NULL, agent_names TEXT NOT NULL, num_samples INTEGER NOT NULL, train_loss REAL,
            val_auc REAL, val_accuracy REAL, val_loss REAL, val_samples INTEGER, seconds REAL NOT NULL,
            finished_at REAL NOT NULL, checkpoint TEXT NOT NULL, PRIMARY KEY (job_id, round));
        INSERT INTO jobs VALUES ('j1', 'old', '{"job": {"name": "old"}}', 'done', 0, 0, 0, 1, '');
        INSERT INTO rounds VALUES ('j1', 1, 1, 2, '["a", "b"]', 20, 0.5, 0.8, 0.7, 0.6, 10, 1.0, 0, 'ck');
    """)
    db.commit()
    db.close()
    store = Store(path)
    old = store.rounds("j1")[0]
    assert old.val_auc == 0.8 and old.epsilon is None and old.epsilons == {}
    store.record_round(RoundRow(job_id="j1", round=2, attempts=1, agents=2, agent_names=("a", "b"), num_samples=20,
                                train_loss=0.4, val_auc=0.9, val_accuracy=0.8, val_loss=0.5, val_samples=10,
                                seconds=1.0, finished_at=0.0, checkpoint="ck2", epsilon=1.25, delta=1e-5,
                                epsilons={"a": 1.25, "b": 1.0}))
    store.close()
    new = Store(path).rounds("j1")[1]
    assert new.epsilon == 1.25 and new.delta == 1e-5 and new.epsilons == {"a": 1.25, "b": 1.0}
