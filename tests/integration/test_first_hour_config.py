"""The first hour of a new operator and hospital (issue 24, items 2, 6 and 12), through the real command lines.

Every test runs ``python -m coordinator.cli`` or ``python -m agent.cli`` as a subprocess in a
temporary folder, as a user would, and checks the message and the exit code: a job file with
several problems reports all of them by full TOML path; ``init`` writes an ``[inference]`` table
that follows ``--bind``; ``trusted_dealers`` paths resolve against agent.toml's folder and
``check`` reads them; ``check`` names the files an image folder holds but the loader skips.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration

ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), MEDFL_TORCH_THREADS="1")


def _run(cwd: pathlib.Path, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=120)


def _coordinator(tmp_path: pathlib.Path, *args: str) -> pathlib.Path:
    proc = _run(tmp_path, "coordinator.cli", "init", "--dir", "coord", "--bind", f"tcp://127.0.0.1:{free_port()}",
                *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path / "coord"


def _agent(tmp_path: pathlib.Path, coord: pathlib.Path) -> pathlib.Path:
    from medfl.data.synthetic import write_image_folder

    site = tmp_path / "site"
    write_image_folder(site / "data", n_train=12, n_val=10, n_test=0, seed=3, image_size=32)
    proc = _run(tmp_path, "agent.cli", "init", "--dir", "site", "--name", "st-mary", "--coordinator",
                "tcp://127.0.0.1:7777", "--coordinator-key", str(coord / "keys" / "coordinator.key"),
                "--data", str(site / "data"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


# ---- item 2: every problem of a file at once, by full TOML path ---------------------------------------------------
def test_job_submit_reports_a_type_error_and_an_unknown_model_together(tmp_path):
    coord = _coordinator(tmp_path)
    (tmp_path / "job.toml").write_text('[job]\nname = "pneumonia"\nrounds = "2"\nmodel = "cnn3"\n')
    proc = _run(tmp_path, "coordinator.cli", "jobs", "submit", "job.toml", "--config", str(coord / "coordinator.toml"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "2 configuration problem(s)" in proc.stderr
    assert "job.rounds: expected an integer, got '2', a string; write rounds = 2 without quotes" in proc.stderr
    assert "job.model: unknown model 'cnn3'" in proc.stderr and "did you mean 'cnn'" in proc.stderr


def test_a_misspelled_privacy_key_says_did_you_mean_and_no_path_is_empty(tmp_path):
    coord = _coordinator(tmp_path)
    (tmp_path / "job.toml").write_text('[job]\nname = "p"\n[privacy]\nnoise_multiplyer = 1.0\n')
    proc = _run(tmp_path, "coordinator.cli", "jobs", "submit", "job.toml", "--config", str(coord / "coordinator.toml"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "privacy.noise_multiplyer: unknown key; did you mean 'noise_multiplier'?" in proc.stderr
    assert "privacy.:" not in proc.stderr and "<root>" not in proc.stderr
    assert "  privacy: give exactly one of noise_multiplier and target_epsilon" in proc.stderr


def test_agent_check_reports_types_and_ranges_of_agent_toml_together(tmp_path):
    site = _agent(tmp_path, _coordinator(tmp_path))
    cfg = site / "agent.toml"
    cfg.write_text(cfg.read_text().replace("min_parties = 2", 'min_parties = "2"')
                   .replace('device = "cpu"', 'device = "gpu"').replace('name = "st-mary"', 'name = ""'))
    proc = _run(tmp_path, "agent.cli", "check", "--config", str(cfg))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    for path in ("policy.min_parties", "training.device", "agent.name"):
        assert f"  {path}: " in proc.stderr, proc.stderr


# ---- item 6: [inference] follows --bind, the dealer's default is in --help, trusted dealers resolve by file --------
def test_coordinator_init_derives_the_inference_bind_and_writes_examples(tmp_path):
    coord = _coordinator(tmp_path)
    text = (coord / "coordinator.toml").read_text()
    doc = tomllib.loads(text)
    assert doc["inference"]["bind"] == "tcp://127.0.0.1:7778" and doc["inference"]["enabled"] is False
    for example in ('# dealer = "tcp://127.0.0.1:7779"', '# dealer_key_file = "keys/dealer.key"', "# checkpoint = ",
                    "# calibration_dir = "):
        assert example in text
    proc = _run(tmp_path, "coordinator.cli", "init", "--dir", "c2", "--bind", "tcp://10.1.2.3:7000",
                "--inference-bind", "tcp://10.1.2.3:9000")
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads((tmp_path / "c2" / "coordinator.toml").read_text())["inference"]["bind"] == \
        "tcp://10.1.2.3:9000"
    proc = _run(tmp_path, "coordinator.cli", "init", "--dir", "c3", "--bind", "tcp://127.0.0.1:7778")
    assert proc.returncode != 0 and "--inference-bind" in proc.stderr


def test_dealer_help_shows_its_default_bind(tmp_path):
    proc = _run(tmp_path, "coordinator.cli", "dealer", "--help")
    assert proc.returncode == 0
    assert "tcp://0.0.0.0:7779" in " ".join(proc.stdout.split())


def test_agent_init_writes_a_commented_inference_table(tmp_path):
    site = _agent(tmp_path, _coordinator(tmp_path))
    text = (site / "agent.toml").read_text()
    assert "inference" not in tomllib.loads(text)  # off until the hospital opts in
    example = "\n".join(line[2:].split(" #")[0] for line in text.splitlines() if line.startswith("# ")
                        and not line.startswith("# medfl"))
    inference = tomllib.loads(example)["inference"]
    assert inference["endpoint"] == "tcp://127.0.0.1:7778" and inference["trusted_dealers"] == ["keys/dealer.key"]


def test_trusted_dealers_resolve_against_agent_toml_and_check_reads_them(tmp_path):
    from medfl.wire import generate_keypair, write_keypair

    site = _agent(tmp_path, _coordinator(tmp_path))
    write_keypair(tmp_path / "dealer", "dealer", generate_keypair())
    shutil.copy(tmp_path / "dealer" / "dealer.key", site / "keys" / "dealer.key")
    cfg = site / "agent.toml"
    cfg.write_text(cfg.read_text() + '\n[inference]\nallow_encrypted = true\ntrusted_dealers = ["keys/dealer.key"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _run(elsewhere, "agent.cli", "check", "--config", str(cfg))
    assert proc.returncode == 0 and "configuration OK" in proc.stdout, proc.stdout + proc.stderr
    # what infer reads, from that other folder: the key beside agent.toml
    probe = ("import sys; from agent.config import load_config; from medfl.wire import read_public_key; "
             "cfg = load_config(sys.argv[1]); print(cfg.inference.trusted_dealers[0]); "
             "[read_public_key(k) for k in cfg.inference.trusted_dealers]")
    out = subprocess.run([sys.executable, "-c", probe, str(cfg)], capture_output=True, text=True, env=ENV,
                         cwd=elsewhere, timeout=120)
    assert out.returncode == 0, out.stderr
    assert pathlib.Path(out.stdout.strip()) == (site / "keys" / "dealer.key").resolve()

    (site / "keys" / "dealer.key").unlink()
    proc = _run(elsewhere, "agent.cli", "check", "--config", str(cfg))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "inference.trusted_dealers[0]: file not found: " + str((site / "keys" / "dealer.key").resolve()) \
        in proc.stderr


# ---- item 12: what the loader skips is counted and named ----------------------------------------------------------
def test_check_names_the_files_it_skips_per_split(tmp_path):
    site = _agent(tmp_path, _coordinator(tmp_path))
    (site / "data" / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"\0" * 64)
    (site / "data" / "train" / "PNEUMONIA" / ".DS_Store").write_bytes(b"\0" * 64)
    (site / "data" / "val" / "NORMAL" / "old").mkdir()
    proc = _run(tmp_path, "agent.cli", "check", "--config", str(site / "agent.toml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    train = lines.index(next(line for line in lines if line.startswith("train: 12 images")))
    assert lines[train + 1] == ("  skipped 2 files that are not images: train/NORMAL/Thumbs.db, "
                                "train/PNEUMONIA/.DS_Store")
    assert "  skipped 1 folder inside a class folder: val/NORMAL/old/" in lines
    assert lines[-1] == "configuration OK"
