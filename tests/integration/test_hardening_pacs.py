"""Issue 22 item 5 from the attacker's side: quarantine evidence, its cap, bad model files, closed pipes."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration
ENV = dict(os.environ, PYTHONPATH=str(REPO), MEDFL_TORCH_THREADS="1")


def _service(tmp_path: pathlib.Path, **pacs: object):
    from agent.config import AgentConfig
    from agent.pacs.service import PacsService
    from medfl import config

    cfg = config.parse(AgentConfig, {
        "agent": {"name": "h", "state_dir": str(tmp_path / "state")},
        "coordinator": {"endpoint": "tcp://127.0.0.1:1"}, "data": {"path": str(tmp_path)},
        "transport": {"curve": False}, "pacs": {"enabled": True, **pacs}})
    return PacsService(cfg)


def _odd_corpus() -> list[bytes]:
    """pydicom's own test files (local only: no download), as raw bytes."""
    import pydicom.data

    root = pathlib.Path(pydicom.data.__file__).parent / "test_files"
    return [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.stat().st_size < 2_000_000]


def test_quarantine_keeps_every_original_of_the_odd_corpus_sent_twice_in_a_second(tmp_path):
    service = _service(tmp_path)
    qdir = tmp_path / "state" / "pacs" / "quarantine"
    try:
        refused: list[bytes] = []
        start = time.monotonic()
        for data in _odd_corpus():
            status, _ = service.accept(data, source="attacker")
            if status != 0:
                refused.append(data)
        for data in refused:  # the same refused files again, straight away
            assert service.accept(data, source="attacker")[0] != 0
        elapsed = time.monotonic() - start
    finally:
        service.audit.close()
    assert len(refused) >= 20, f"only {len(refused)} corpus files were refused"
    kept = {}
    for p in qdir.glob("*.dcm"):
        kept.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p)
        assert p.with_name(p.name[:-4] + ".reason.json").is_file()
    for data in refused:  # every arrival kept, byte for byte
        assert len(kept.get(hashlib.sha256(data).hexdigest(), [])) == 2 * refused.count(data)
    assert len(list(qdir.glob("*.dcm"))) == 2 * len(refused) == len(list(qdir.glob("*.reason.json")))
    print(f"{len(refused)} refused files x2 in {elapsed:.2f} s")


def test_same_uid_same_second_different_bytes_both_survive(tmp_path):
    from agent.pacs.inbox import Quarantine

    q = Quarantine(tmp_path)
    a = q.put("d" * 64, b"first", "bad", 0xC000)
    b = q.put("d" * 64, b"second", "bad", 0xC000)
    c = q.put("d" * 64, b"first", "bad again", 0xC000)
    assert a is not None and b is not None and c is not None and len({a, b, c}) == 3
    assert [p.with_suffix(".dcm").read_bytes() for p in (a, b, c)] == [b"first", b"second", b"first"]
    assert "bad again" in c.with_suffix(".reason.json").read_text()


def test_quarantine_cap_refuses_without_storing_and_counts(tmp_path, caplog):
    service = _service(tmp_path, quarantine_max_mb=1)
    qdir = tmp_path / "state" / "pacs" / "quarantine"
    junk = [os.urandom(300_000) for _ in range(6)]  # unparsable: refused with 0xC000
    try:
        with caplog.at_level("WARNING"):
            statuses = [service.accept(data, source="attacker")[0] for data in junk]
        assert statuses == [0xC000] * 6  # refused (never acknowledged), kept or not
        used = sum(p.stat().st_size for p in qdir.iterdir())
        assert used <= 1024 * 1024 and len(list(qdir.glob("*.dcm"))) == 3
        assert service.quarantine.dropped == 3
        assert "quarantine full" in caplog.text and "quarantine_max_mb" in caplog.text
        assert caplog.text.count("quarantine full") == 1  # coalesced: one warning with the count
        rows = service.audit.rows()
        assert len(rows) == 6 and sum("not kept" in str(r["reason"]) for r in rows) == 3
        # acknowledged input that fails later is kept over the cap (nothing acknowledged is lost)
        assert service.quarantine.put("e" * 64, junk[0], "late", 0xC000, force=True) is not None
    finally:
        service.audit.close()


def test_corrupt_model_file_stops_pacs_serve_with_one_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 7 + b"not a checkpoint")
    (tmp_path / "agent.toml").write_text("\n".join([
        "[agent]", 'name = "h"', 'state_dir = "state"', "[coordinator]", 'endpoint = "tcp://127.0.0.1:1"',
        "[data]", 'path = "data"', "[transport]", "curve = false",
        "[pacs]", "enabled = true", 'bind = "127.0.0.1"', "port = 1", f'model_file = "{bad}"']) + "\n")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "pacs", "serve", "--config", "agent.toml"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert f"model checkpoint {bad}" in r.stderr and "replace it with a checkpoint" in r.stderr
    assert r.stderr.count("error:") == 1


def test_corrupt_checkpoint_is_a_state_error(tmp_path):
    from medfl.errors import StateError
    from medfl.models.weights import load_checkpoint

    path = tmp_path / "truncated.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(StateError, match="truncated.safetensors.*replace it"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.safetensors")


@pytest.fixture
def coordinator_config(tmp_path):
    d = tmp_path / "coord"
    subprocess.run([sys.executable, "-m", "coordinator.cli", "init", "--dir", str(d), "--bind",
                    "tcp://127.0.0.1:1"], env=ENV, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    return next(d.glob("*.toml"))


@pytest.mark.parametrize("argv", [["coordinator.cli", "nodes", "list"], ["agent.cli", "--help"],
                                  ["apps.cli", "models"]])
def test_cli_into_a_closed_pipe_exits_quietly(argv, coordinator_config, tmp_path):
    extra = ["--config", str(coordinator_config)] if argv[0] == "coordinator.cli" else []
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", *argv, *extra], stdout=write, stderr=subprocess.PIPE,
                           env=ENV, cwd=tmp_path, text=True, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr


def test_nodes_list_into_head(coordinator_config, tmp_path):
    cmd = f"{sys.executable} -m coordinator.cli nodes list --config {coordinator_config} | head -1"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=ENV, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
