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
