"""Encrypted inference with real processes on loopback: agents -> the coordinator's model server + a dealer.

Every party is its own process (``medfl-coordinator serve`` hosting the model server,
``medfl-coordinator dealer``, ``medfl-agent infer --encrypted``) on CurveZMQ. The model is
medfl's cnn (GroupNorm) at width 2 and 64 px so that a session takes seconds on a shared CPU.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.conftest import Federation, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 8.0


def _checkpoint(path: pathlib.Path) -> torch.nn.Module:
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(3)  # test model weights only
    model = create_model("cnn", width=2).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)
    save_checkpoint(path, state_arrays(model), {"model": "cnn", "model_args": json.dumps({"width": 2}),
                                                "image_size": "64"})
    return model


def _images(folder: pathlib.Path, n: int, seed: int) -> list[pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:90, 0:80]
        img = 120 + 80 * np.sin(xx / (7 + 3 * i)) * np.cos(yy / 11) + rng.normal(0, 20, (90, 80))
        p = folder / f"xray{seed}-{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        out.append(p)
    return out


def _plain_scores(model: torch.nn.Module, paths: list[pathlib.Path]) -> list[tuple[float, np.ndarray]]:
    from medfl.data.folder import read_image

    out = []
    with torch.no_grad():
        for p in paths:
            logits = model(torch.from_numpy(read_image(p, 64))[None, None])[0].double().numpy()
            out.append((float(torch.softmax(torch.from_numpy(logits), 0)[1]), logits))
    return out


class InferenceSetup:
    """A federation whose coordinator hosts a model server, a dealer process, and agents configured for it."""

    def __init__(self, fed: Federation):
        from medfl.wire import generate_keypair, write_keypair

        self.fed = fed
        self.model = _checkpoint(fed.root / "served.safetensors")
        self.dealer_pub, self.dealer_sec = write_keypair(fed.root / "dealer", "dealer", generate_keypair())
        self.dealer_ep = f"tcp://127.0.0.1:{free_port()}"
        self.ms_ep = f"tcp://127.0.0.1:{free_port()}"
        cfg = pathlib.Path(fed.ccfg)
        base = cfg.read_text().split("\n[inference]")[0]  # init writes a disabled table; replace it
        cfg.write_text(base + f"""
[inference]
enabled = true
bind = "{self.ms_ep}"
checkpoint = "{fed.root / 'served.safetensors'}"
dealer = "{self.dealer_ep}"
dealer_key_file = "{self.dealer_pub}"
timeout_s = {TIMEOUT_S}
""")

    def start(self) -> None:
        self.fed._spawn("dealer", ["coordinator.cli", "dealer", "--bind", self.dealer_ep, "--key",
                                   str(self.dealer_sec), "--allow",
                                   str(self.fed.coord_dir / "keys" / "coordinator.key")])
        self.fed.start_coordinator()
        self.fed.wait_for("model server up", lambda: "hosted on" in self.fed.log("coordinator"), 240)

    def agent(self, name: str, *, approve: bool = True, dealer_key: pathlib.Path | None = None,
              n_train: int = 4, n_val: int = 2) -> pathlib.Path:
        folder = self.fed.add_agent(name, n_train=n_train, n_val=n_val, approve=approve)
        toml = folder / "agent.toml"
        toml.write_text(toml.read_text() + f"""
[inference]
allow_encrypted = true
endpoint = "{self.ms_ep}"
trusted_dealers = ["{dealer_key or self.dealer_pub}"]
image_size = 64
timeout_s = {TIMEOUT_S}
""")
        return folder

    def infer(self, name: str, images: list[pathlib.Path]) -> subprocess.Popen:
        out = self.fed.root / name / "infer.json"
        log = self.fed.root / "logs" / f"{name}-infer.log"
        log.parent.mkdir(exist_ok=True)
        fh = open(log, "w")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "infer", "--encrypted", "--json", str(out),
                                 "--config", str(self.fed.root / name / "agent.toml"), *map(str, images)],
                                stdout=fh, stderr=subprocess.STDOUT, env=self.fed.env, cwd=self.fed.root)
        fh.close()
        self.fed.procs[f"{name}-infer"] = proc
        self.fed.logs[f"{name}-infer"] = log
        return proc

    def sessions(self) -> list[dict]:
        return self.fed.status()["inference_sessions"]

    def result(self, name: str) -> dict:
        return json.loads((self.fed.root / name / "infer.json").read_text())


@pytest.fixture
def setup(federation):
    return InferenceSetup(federation)


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_two_agents_at_once_get_the_plain_models_decisions(setup):
    setup.agent("a")
    setup.agent("b")
    setup.start()
    imgs_a = _images(setup.fed.root / "imgs-a", 2, seed=1)
    imgs_b = _images(setup.fed.root / "imgs-b", 1, seed=2)
    pa, pb = setup.infer("a", imgs_a), setup.infer("b", imgs_b)
    assert _wait(pa, 300) == 0, setup.fed.log("a-infer") + setup.fed.log("coordinator")[-3000:]
    assert _wait(pb, 300) == 0, setup.fed.log("b-infer") + setup.fed.log("coordinator")[-3000:]
    for name, imgs in (("a", imgs_a), ("b", imgs_b)):
        res = setup.result(name)
        assert res["mode"] == "2pc+dealer" and len(res["images"]) == len(imgs)
        for row, (plain_score, plain_logits) in zip(res["images"], _plain_scores(setup.model, imgs), strict=True):
            assert abs(row["score"] - plain_score) < 2e-2
            assert np.max(np.abs(np.array(row["logits"]) - plain_logits)) < 5e-2
            assert int(np.argmax(row["logits"])) == int(np.argmax(plain_logits))
            assert row["rounds"] > 0 and row["bytes_online"] > 0 and row["bytes_offline"] > 0
    sessions = setup.sessions()
    assert [s["stage"] for s in sessions] == ["closed", "closed"]
    assert len({s["agent"] for s in sessions}) == 2  # the operator sees which agent ran which session
    text = setup.fed.coordinator("status")
    assert "inference session" in text and "closed" in text


def test_agent_killed_mid_session_aborts_it_and_the_next_request_is_served(setup):
    setup.agent("a")
    setup.agent("b")
    setup.start()
    proc = setup.infer("a", _images(setup.fed.root / "imgs-a", 16, seed=3))
    setup.fed.wait_for("session online", lambda: any(s["stage"] == "online" for s in setup.sessions()), 240,
                       every=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t_kill = time.monotonic()
    setup.fed.wait_for("session aborted", lambda: any(s["stage"] == "aborted" for s in setup.sessions()),
                       TIMEOUT_S + 30)
    assert time.monotonic() - t_kill < TIMEOUT_S + 30
    aborted = [s for s in setup.sessions() if s["stage"] == "aborted"][0]
    assert "timeout" in aborted["message"] and "disappeared" in aborted["message"]
    pb = setup.infer("b", _images(setup.fed.root / "imgs-b", 1, seed=4))
    assert _wait(pb, 300) == 0, setup.fed.log("b-infer")
    assert setup.sessions()[-1]["stage"] == "closed"


def test_dealer_killed_mid_session_aborts_on_both_sides(setup):
    setup.agent("a")
    setup.start()
    setup.fed.kill("dealer", signal.SIGSTOP)  # the dealer hangs: no material ever comes
    proc = setup.infer("a", _images(setup.fed.root / "imgs-a", 1, seed=5))
    assert _wait(proc, TIMEOUT_S + 120) != 0
    log = setup.fed.log("a-infer")
    assert "aborted" in log or "refused" in log or "dealer" in log, log
    setup.fed.wait_for("session aborted", lambda: any(s["stage"] == "aborted" for s in setup.sessions()), 60)
    assert "dealer material" in [s for s in setup.sessions() if s["stage"] == "aborted"][0]["message"]


def test_unapproved_agent_key_is_refused_with_a_clear_error(setup):
    setup.agent("stranger", approve=False)
    setup.start()
    proc = setup.infer("stranger", _images(setup.fed.root / "imgs", 1, seed=6))
    assert _wait(proc, 120) != 0
    assert "refused this data owner's key" in setup.fed.log("stranger-infer")
    assert setup.sessions() == []


def test_untrusted_dealer_is_refused_by_the_agent_policy(setup):
    from medfl.wire import generate_keypair, write_keypair

    other, _ = write_keypair(setup.fed.root / "other", "dealer", generate_keypair())
    setup.agent("a", dealer_key=other)
    setup.start()
    proc = setup.infer("a", _images(setup.fed.root / "imgs", 1, seed=7))
    assert _wait(proc, 120) != 0
    assert "does not trust" in setup.fed.log("a-infer")
    setup.fed.wait_for("session aborted", lambda: any(s["stage"] == "aborted" for s in setup.sessions()), 60)


def test_medfl_infer_encrypted_compare_plain_on_png_jpeg_and_dicom(tmp_path):
    """`medfl infer --encrypted --compare-plain`: it starts a dealer and a model server itself."""
    import os

    from medfl.data.dicom import synthetic_cr
    from medfl.data.synthetic import generate

    model = _checkpoint(tmp_path / "model.safetensors")
    png = _images(tmp_path / "imgs", 1, seed=8)[0]
    jpeg = tmp_path / "imgs" / "xray.jpg"
    Image.open(png).save(jpeg, quality=95)
    dcm = tmp_path / "imgs" / "cr.dcm"
    synthetic_cr(generate(1, seed=3, image_size=96)[0][0, 0], patient_id="P1").save_as(dcm, enforce_file_format=True)
    out = tmp_path / "infer.json"
    env = dict(os.environ, MEDFL_TORCH_THREADS="1")
    ckpt = tmp_path / "model.safetensors"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "infer", "--checkpoint", str(ckpt), "--encrypted",
                           "--compare-plain", "--json", str(out), str(png), str(jpeg), str(dcm)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["mode"] == "2pc+dealer" and [pathlib.Path(r["path"]).name for r in res["images"]] == \
        ["xray8-0.png", "xray.jpg", "cr.dcm"]
    keys = {"path", "score", "plain_score", "seconds", "online_seconds", "bytes_online", "bytes_offline", "rounds"}
    assert all(keys <= set(r) for r in res["images"])
    assert res["max_abs_diff"] < 5e-2 and res["decisions_agree"] is True
    from medfl.data.folder import read_image

    with torch.no_grad():  # the plain score is the checkpoint's, on the image read as in training
        want = torch.softmax(model(torch.from_numpy(read_image(dcm, 64))[None, None])[0], 0)[1].item()
    assert abs(res["images"][2]["plain_score"] - want) < 1e-6
    assert abs(res["images"][2]["score"] - want) < 2e-2
    assert "decisions agree" in proc.stdout and "cr.dcm" in proc.stdout


def test_standalone_model_server_killed_mid_session_the_agents_abort_within_the_timeout(setup):
    """`medfl-coordinator model-server` as its own process; SIGKILL it while one agent is online and one queued."""
    fed = setup.fed
    agent = setup.agent("a")
    queued = setup.agent("b")
    status = fed.root / "sessions.json"
    fed._spawn("dealer", ["coordinator.cli", "dealer", "--bind", setup.dealer_ep, "--key", str(setup.dealer_sec),
                          "--allow", str(fed.coord_dir / "keys" / "coordinator.key")])
    fed._spawn("model-server", ["coordinator.cli", "model-server", "--checkpoint", str(fed.root / "served.safetensors"),
                                "--bind", setup.ms_ep, "--key", str(fed.coord_dir / "keys" / "coordinator.key_secret"),
                                "--allow", str(agent / "keys" / "agent.key"),
                                "--allow", str(queued / "keys" / "agent.key"), "--dealer", setup.dealer_ep,
                                "--dealer-key", str(setup.dealer_pub), "--timeout", "60",
                                "--status-file", str(status)])
    fed.wait_for("model server up", lambda: "listening on" in fed.log("model-server"), 240)
    proc = setup.infer("a", _images(fed.root / "imgs", 4, seed=9))

    def online() -> bool:
        return status.exists() and any(s["stage"] == "online" for s in json.loads(status.read_text()))

    fed.wait_for("session online", online, 240, every=0.05)
    proc.send_signal(signal.SIGSTOP)  # hold agent a mid-session (the model server waits up to 60 s for it)
    proc_b = setup.infer("b", _images(fed.root / "imgs-b", 1, seed=10))
    fed.wait_for("b queued", lambda: len(json.loads(status.read_text())) == 2, 60)
    fed.kill("model-server")
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGCONT)
    assert _wait(proc, TIMEOUT_S + 60) == 8  # ExitCode.SESSION_ABORTED
    assert _wait(proc_b, TIMEOUT_S + 60) == 8  # the queued one too: its position updates stopped
    assert time.monotonic() - t_kill < TIMEOUT_S + 60
    for name in ("a-infer", "b-infer"):
        log = fed.log(name)
        assert "session aborted (timeout)" in log and "disappeared" in log, log


def test_pacs_scoring_by_encrypted_inference_and_the_sr_says_so(tmp_path):
    """[pacs] scoring = "encrypted": a received CR is scored through a real dealer and model server."""
    import io

    from pydicom import dcmread

    from agent.config import AgentConfig
    from agent.pacs.service import PacsService
    from apps.infer import local_parties
    from medfl import config
    from medfl.data.dicom import synthetic_cr
    from medfl.data.synthetic import generate

    model = _checkpoint(tmp_path / "model.safetensors")
    ds = synthetic_cr(generate(1, seed=5, image_size=96)[0][0, 0], patient_id="P9")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with local_parties(tmp_path / "model.safetensors", timeout_s=60, workdir=tmp_path / "parties") as lp:
        keys = tmp_path / "parties" / "keys"
        cfg = config.parse(AgentConfig, {
            "agent": {"name": "h", "state_dir": str(tmp_path / "state")},
            "coordinator": {"endpoint": "tcp://127.0.0.1:1", "public_key_file": str(lp["server_key"])},
            "keys": {"secret_key_file": str(keys / "client.key_secret")},
            "data": {"path": str(tmp_path)},
            "pacs": {"enabled": True, "scoring": "encrypted", "port": free_port(), "bind": "127.0.0.1",
                     "workers": 1},
            "inference": {"allow_encrypted": True, "endpoint": lp["endpoint"],
                          "model_server_key_file": str(lp["server_key"]),
                          "trusted_dealers": [str(lp["dealer_key"])], "image_size": 64, "timeout_s": 60}})
        service = PacsService(cfg)
        service.start()
        try:
            assert service.accept(buf.getvalue(), source="test") == (0, "")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not any(r["status"] == "scored" for r in service.audit.rows()):
                time.sleep(0.5)
            rows = service.audit.rows()
            assert [r["status"] for r in rows] == ["scored"], rows
        finally:
            service.stop()
    from agent.pacs.scoring import preprocess

    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(preprocess(ds, 64))[None, None])[0], 0)[1].item()
    assert abs(rows[0]["score"] - want) < 2e-2
    assert "encrypted" in rows[0]["model_id"]
    srs = list((tmp_path / "state" / "pacs" / "outbox").rglob("*"))
    sr = dcmread([p for p in srs if p.is_file()][0])
    assert "encrypted inference" in sr.SeriesDescription
    results = (tmp_path / "state" / "pacs" / "results").rglob("*.jsonl")
    lines = [json.loads(x) for f in results for x in f.read_text().splitlines()]
    assert lines and lines[0]["scoring"] == "encrypted"


def test_the_coordinator_serves_the_model_the_federation_just_trained(federation):
    """Train one round, then restart the coordinator with [inference] and no checkpoint: it serves the newest."""
    fed = federation
    setup = InferenceSetup(fed)
    cfg = pathlib.Path(fed.ccfg)
    cfg.write_text(cfg.read_text().replace(f'checkpoint = "{fed.root / "served.safetensors"}"\n', ""))
    for name in ("a", "b"):
        setup.agent(name, n_train=24, n_val=8)
        toml = fed.root / name / "agent.toml"
        toml.write_text(toml.read_text().replace("image_size = 64", "image_size = 32"))
    cfg_text = cfg.read_text()
    cfg.write_text(cfg_text.replace("enabled = true", "enabled = false"))
    fed.start_coordinator()
    for name in ("a", "b"):
        fed.start_agent(name)
    fed.wait_online(2)
    job = fed.wait_job(fed.submit(rounds=1, min_agents=2), timeout=300)
    assert job.status == "done", job.message
    fed.kill("coordinator", signal.SIGTERM)
    cfg.write_text(cfg_text)
    setup.start()  # dealer, and the coordinator again, now hosting the model server
    assert "serving the newest federated model" in fed.log("coordinator")
    proc = setup.infer("a", _images(fed.root / "imgs", 1, seed=11))
    assert _wait(proc, 300) == 0, fed.log("a-infer") + fed.log("coordinator")[-3000:]
    res = setup.result("a")
    assert res["images"][0]["rounds"] > 0 and 0.0 <= res["images"][0]["score"] <= 1.0
    announced = setup.sessions()[-1]
    assert announced["stage"] == "closed"
    from medfl.models import create_model
    from medfl.models.weights import load_checkpoint, load_state_arrays

    newest = sorted((fed.coord_dir / "state" / "checkpoints").glob("*/round-*.safetensors"))[-1]
    arrays, meta = load_checkpoint(newest)
    model = create_model("cnn", **json.loads(meta.get("model_args", "{}")))
    load_state_arrays(model, arrays)
    model.eval()
    from medfl.data.folder import read_image

    img = _images(fed.root / "imgs", 1, seed=11)[0]
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(read_image(img, 32))[None, None])[0], 0)[1].item()
    assert abs(res["images"][0]["score"] - want) < 2e-2
