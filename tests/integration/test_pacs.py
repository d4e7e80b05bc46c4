"""PACS hooks against a real Orthanc and real DCMTK tools on loopback.

Orthanc runs with the shipped configuration and Lua routing (agent/pacs/orthanc/), ports and
folders swapped for temp ones; images go in with DCMTK's storescu; results are read back through
Orthanc's REST API.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from pydicom import dcmread

REPO = pathlib.Path(__file__).resolve().parents[2]
ORTHANC_DIR = REPO / "agent" / "pacs" / "orthanc"

pytestmark = [pytest.mark.integration, pytest.mark.orthanc, pytest.mark.slow]

# DCMTK's tools, by absolute path: pynetdicom installs Python apps with the same names
STORESCU = shutil.which("storescu", path="/usr/bin:/usr/local/bin")
ECHOSCU = shutil.which("echoscu", path="/usr/bin:/usr/local/bin")

if shutil.which("Orthanc") is None or STORESCU is None or ECHOSCU is None:
    pytestmark.append(pytest.mark.skip(reason="needs Debian's orthanc and dcmtk packages"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(what, pred, timeout=60.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Orthanc:
    def __init__(self, root: pathlib.Path, agent_port: int, dicom_port: int | None = None):
        self.root = root
        self.dicom_port, self.http_port = dicom_port or free_port(), free_port()
        cfg = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
        cfg.update({"StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
                    "DicomPort": self.dicom_port, "HttpPort": self.http_port,
                    "LuaScripts": [str(ORTHANC_DIR / "medfl-route.lua")]})
        cfg["DicomModalities"]["medfl"] = ["MEDFL", "127.0.0.1", agent_port]
        (root / "orthanc.json").write_text(json.dumps(cfg))
        self.log = open(root / "orthanc.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_until("Orthanc's REST API", self._up, timeout=30)

    def _up(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def sr_reports(self) -> list:
        out = []
        for inst in self.get("/instances?expand"):
            tags = self.get(f"/instances/{inst['ID']}/simplified-tags")
            if tags.get("Modality") == "SR":
                out.append(dcmread(io.BytesIO(self.get(f"/instances/{inst['ID']}/file"))))
        return out

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class PacsAgent:
    def __init__(self, root: pathlib.Path, model_file: pathlib.Path):
        self.root = root
        self.port = free_port()
        self.model_file = model_file
        self.proc: subprocess.Popen | None = None

    def configure(self, dest_port: int, **extra: str) -> None:
        lines = [
            "[agent]", 'name = "pacs-test"', 'state_dir = "state"',
            "[coordinator]", 'endpoint = "tcp://127.0.0.1:1"',
            "[data]", 'path = "data"',
            "[transport]", "curve = false",
            "[pacs]", "enabled = true", 'ae_title = "MEDFL"', 'bind = "127.0.0.1"', f"port = {self.port}",
            f'model_file = "{self.model_file}"', "workers = 2", "threshold = 0.5",
            *[f"{k} = {v}" for k, v in extra.items()],
            "[pacs.destination]", 'ae_title = "ORTHANC"', 'host = "127.0.0.1"', f"port = {dest_port}",
        ]
        (self.root / "agent.toml").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), MEDFL_TORCH_THREADS="1")
        log = open(self.root / "agent.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "pacs", "serve", "--config",
                                      str(self.root / "agent.toml")], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.root)
        log.close()
        wait_until("the agent's DICOM port", lambda: subprocess.run(
            [ECHOSCU, "-aec", "MEDFL", "127.0.0.1", str(self.port)], capture_output=True).returncode == 0,
            timeout=60)

    def kill(self, sig=signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def audit(self) -> list[dict]:
        db = sqlite3.connect(self.root / "state" / "pacs" / "audit.sqlite")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM scans")]
        finally:
            db.close()

    def log(self) -> str:
        return (self.root / "agent.log").read_text()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def model_file(tmp_path):
    import torch

    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(3)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, state_arrays(create_model("cnn")), {"model": "cnn", "image_size": "64"})
    return path


@pytest.fixture
def site(tmp_path, model_file):
    agent = PacsAgent(tmp_path, model_file)
    orthanc = Orthanc(tmp_path, agent.port)
    agent.configure(orthanc.dicom_port)
    yield orthanc, agent
    agent.close()
    orthanc.close()


def make_images(folder: pathlib.Path, n: int, *, seed: int = 0, study_uid: str | None = None,
                monochrome1_every: int = 0) -> list[pathlib.Path]:
    from medfl.data.dicom import synthetic_cr
    from medfl.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    images, _ = generate(n, seed=seed, image_size=128)
    paths = []
    for i in range(n):
        ds = synthetic_cr(images[i, 0], patient_id=f"P{seed}-{i}", study_uid=study_uid,
                          monochrome1=bool(monochrome1_every and i % monochrome1_every == 0))
        path = folder / f"cr-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, aet: str, files: list[pathlib.Path], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-v", "-aec", aet, *extra, "127.0.0.1", str(port), *map(str, files)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


#: storescu's flag proposing a file's own transfer syntax (so it is sent as it is, not converted)
PROPOSE = {"1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.1.99": "-xd",
           "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
           "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
           "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu"}


def propose(path: pathlib.Path) -> str:
    return PROPOSE[str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)]


#: how DCMTK's storescu names the C-STORE statuses the agent answers with
DCMTK_STATUS = {0x0122: "SOPClassNotSupported", 0xA900: "DataSetDoesNotMatchSOPClass", 0xC000: "CannotUnderstand"}


def sr_facts(sr) -> tuple[str, float, str]:
    """(referenced SOP Instance UID, score, finding) from one of our SRs."""
    ref, score, finding = None, None, None
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        stack.extend(getattr(item, "ContentSequence", []))
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "NUM" and name == "Pneumonia AI score":
            score = float(item.MeasuredValueSequence[0].NumericValue)
        if item.ValueType == "IMAGE":
            ref = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        if item.ValueType == "CODE" and name == "Finding":
            finding = item.ConceptCodeSequence[0].CodeMeaning
    return ref, score, finding


def local_scores(model_file: pathlib.Path, paths: list[pathlib.Path]) -> dict[str, float]:
    from agent.pacs.scoring import Scorer

    scorer = Scorer(model_file=model_file, models_dir=model_file.parent)
    out = {}
    for p in paths:
        ds = dcmread(p)
        out[str(ds.SOPInstanceUID)] = scorer.score(ds)[0]
    return out


def test_orthanc_routes_scans_and_gets_one_sr_each(site, tmp_path, model_file):
    orthanc, agent = site
    agent.start()
    study = "1.2.826.0.1.3680043.8.498.1"
    paths = make_images(tmp_path / "in", 6, seed=1, study_uid=study, monochrome1_every=3)
    proc = storescu(orthanc.dicom_port, "ORTHANC", paths)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = wait_until("6 SRs in Orthanc", lambda: (r := orthanc.sr_reports()) and len(r) >= 6 and r,
                         timeout=120, every=0.5)
    expected = local_scores(model_file, paths)
    assert len(reports) == 6
    for sr in reports:
        ref, score, finding = sr_facts(sr)
        assert sr.StudyInstanceUID == study  # same study as the image
        assert ref in expected
        assert score == pytest.approx(expected[ref], abs=1e-6)
        assert finding == ("Pneumonia" if score >= 0.5 else "Normal")
        assert "AI RESULT" in sr.SeriesDescription
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    # the SR lands in Orthanc a moment before the agent records the delivery
    wait_until("deliveries recorded", lambda: [r["status"] for r in agent.audit()] == ["sent"] * 6, timeout=30)
    rows = agent.audit()
    assert len(rows) == 6 and all(r["status"] == "sent" and r["score_count"] == 1 for r in rows)
    results = list((tmp_path / "state" / "pacs" / "results").glob("*.jsonl"))[0].read_text().splitlines()
    assert len(results) == 6 and all(json.loads(line)["ai_result"] for line in results)
    log = agent.log()
    for p in paths:  # no patient identifiers in the logs
        ds = dcmread(p)
        assert ds.PatientID not in log and str(ds.PatientName) not in log and ds.SOPInstanceUID not in log
    # hospital IT's view (issue #18 item 5): doctor verifies the PACS with a C-ECHO, status shows the queues
    env = dict(os.environ, PYTHONPATH=str(REPO))
    doctor = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--config", str(tmp_path / "agent.toml"),
                             "--timeout", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert f"[ok  ] pacs destination: ORTHANC@127.0.0.1:{orthanc.dicom_port} answers C-ECHO" in doctor.stdout, \
        doctor.stdout + doctor.stderr
    assert "[fail] coordinator: no CurveZMQ handshake with tcp://127.0.0.1:1" in doctor.stdout  # none in this test
    assert doctor.returncode == 1 and "fix: check the address" in doctor.stdout
    status = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(tmp_path / "agent.toml"),
                             "--json"], capture_output=True, text=True, env=env, timeout=120)
    st = json.loads(status.stdout)
    assert st["pacs"] == {"enabled": True, "inbox": 0, "outbox": 0, "quarantined": 0}, st


ACK = "Received Store Response (Success)"


def test_sigkill_mid_burst_scores_every_acknowledged_instance_once(site, tmp_path):
    orthanc, agent = site
    agent.start()
    paths = make_images(tmp_path / "burst", 120, seed=2)
    proc = subprocess.Popen([STORESCU, "-v", "-aec", "MEDFL", "127.0.0.1", str(agent.port), *map(str, paths)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    acked_so_far = 0
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if ACK in line:
            acked_so_far += 1
            if acked_so_far == 20:
                agent.kill(signal.SIGKILL)  # mid-burst: some scored, some only in the inbox
                break
    rest, _ = proc.communicate(timeout=60)
    lines += rest.splitlines()
    acked = sum(ACK in line for line in lines)
    assert 20 <= acked < len(paths), "".join(lines[-30:])
    acked_uids = [str(dcmread(p).SOPInstanceUID) for p in paths[:acked]]
    agent.start()
    from agent.pacs.inbox import uid_hash

    keys = {uid_hash(u) for u in acked_uids}
    wait_until("every acknowledged instance scored and sent", lambda: keys <= {
        r["uid_sha256"] for r in agent.audit() if r["status"] == "sent"}, timeout=120, every=0.5)
    rows = {r["uid_sha256"]: r for r in agent.audit()}
    assert all(rows[k]["score_count"] == 1 for k in keys)
    reports = wait_until("SRs in Orthanc", lambda: (r := orthanc.sr_reports()) and len(r) >= len(keys) and r,
                         timeout=60, every=0.5)
    refs = [sr_facts(sr)[0] for sr in reports]
    assert sorted(set(refs)) == sorted(set(refs) & set(acked_uids + [str(dcmread(p).SOPInstanceUID) for p in paths]))
    for uid in acked_uids:
        assert refs.count(uid) == 1, "exactly one SR per acknowledged image"


BAD_FILES = {
    "reportsi.dcm": (0x0122, "SOP class"),                  # an SR: not an image
    "rtplan.dcm": (0x0122, "SOP class"),                    # RT Plan: not an image
    "SC_rgb_rle_2frame.dcm": (0xA900, "multi-frame"),       # multi-frame
    "SC_rgb_dcmtk_+eb+cr.dcm": (0xA900, "photometric"),    # colour secondary capture (JPEG)
}


def test_bad_input_is_quarantined_with_the_right_status(site, tmp_path):
    from pydicom.data import get_testdata_file

    orthanc, agent = site
    agent.start()
    sent = []
    for name, (status, reason) in BAD_FILES.items():
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        proc = storescu(agent.port, "MEDFL", [pathlib.Path(path)], propose(pathlib.Path(path)))
        assert DCMTK_STATUS[status] in proc.stdout, proc.stdout
        sent.append((name, status, reason))
    # a CR without pixel data
    from medfl.data.dicom import synthetic_cr

    ds = synthetic_cr(np.zeros((16, 16)), patient_id="NOPIX")
    del ds.PixelData
    nopix = tmp_path / "nopix.dcm"
    ds.save_as(nopix, enforce_file_format=True)
    proc = storescu(agent.port, "MEDFL", [nopix])
    assert DCMTK_STATUS[0xA900] in proc.stdout, proc.stdout
    sent.append(("nopix", 0xA900, "no Pixel Data"))
    reasons = [json.loads(p.read_text()) for p in (tmp_path / "state" / "pacs" / "quarantine").glob("*.reason.json")]
    assert len(reasons) == len(sent)
    for _, status, reason in sent:
        assert any(r["dicom_status"] == f"0x{status:04X}" and reason.lower() in r["reason"].lower() for r in reasons)
    rows = agent.audit()
    assert len(rows) == len(sent) and all(r["status"] == "quarantined" for r in rows)
    assert agent.proc.poll() is None  # still serving
    assert orthanc.sr_reports() == []


def _variants(folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """The same 8-bit radiograph in every common transfer syntax (DCMTK and pydicom encoders)."""
    from pydicom.uid import JPEG2000Lossless, generate_uid

    from medfl.data.dicom import synthetic_cr
    from medfl.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    image = generate(1, seed=9, image_size=128)[0][0, 0]
    tools = {"implicit": (["dcmconv", "+ti"], True), "explicit": (None, True), "deflate": (["dcmconv", "+td"], True),
             "jpeg-baseline": (["dcmcjpeg", "+eb"], False), "jpeg-lossless": (["dcmcjpeg", "+e1"], True),
             "rle": (["dcmcrle"], True), "j2k-lossless": ("pydicom", True)}
    out = {}
    for name, (tool, lossless) in tools.items():
        ds = synthetic_cr(image, patient_id=f"TS-{name}", bits=8)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        src = folder / f"{name}-src.dcm"
        dst = folder / f"{name}.dcm"
        ds.save_as(src, enforce_file_format=True)
        if tool is None:
            src.rename(dst)
        elif tool == "pydicom":
            ds.compress(JPEG2000Lossless)
            ds.save_as(dst, enforce_file_format=True)
        else:
            subprocess.run([shutil.which(tool[0], path="/usr/bin:/usr/local/bin"), *tool[1:], str(src), str(dst)],
                           check=True, capture_output=True)
        out[name] = (dst, lossless)
    return out


def test_common_transfer_syntaxes_are_decoded_and_scored(site, tmp_path, model_file):
    from agent.pacs.inbox import uid_hash

    orthanc, agent = site
    agent.start()
    variants = _variants(tmp_path / "ts")
    reference = local_scores(model_file, [variants["explicit"][0]])
    ref_score = next(iter(reference.values()))
    for name, (path, _) in variants.items():
        proc = storescu(agent.port, "MEDFL", [path], propose(path))
        assert "Received Store Response (Success)" in proc.stdout, f"{name}: {proc.stdout}"
    keys = {name: uid_hash(str(dcmread(p).SOPInstanceUID)) for name, (p, _) in variants.items()}
    wait_until("every variant scored", lambda: set(keys.values()) <= {
        r["uid_sha256"] for r in agent.audit() if r["status"] in ("scored", "sent")}, timeout=60)
    rows = {r["uid_sha256"]: r for r in agent.audit()}
    for name, (_, lossless) in variants.items():
        got = rows[keys[name]]["score"]
        assert got == pytest.approx(ref_score, abs=1e-5 if lossless else 0.05), name


def test_watch_folder(tmp_path, model_file):
    agent = PacsAgent(tmp_path, model_file)
    orthanc = Orthanc(tmp_path, agent.port)
    try:
        agent.configure(orthanc.dicom_port, watch_folder=f'"{tmp_path / "drop"}"')
        agent.start()
        paths = make_images(tmp_path / "staging", 3, seed=4)
        (tmp_path / "drop").mkdir(exist_ok=True)
        (tmp_path / "drop" / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00")
        for p in paths:
            shutil.copy(p, tmp_path / "drop" / p.name)
        wait_until("3 SRs from the watch folder", lambda: len(orthanc.sr_reports()) == 3, timeout=60, every=0.5)
        wait_until("the drop folder emptied", lambda: not list((tmp_path / "drop").iterdir()), timeout=10)
        wait_until("deliveries recorded", lambda: sorted(r["status"] for r in agent.audit()) == [
            "quarantined", "sent", "sent", "sent"], timeout=30)
    finally:
        agent.close()
        orthanc.close()


def test_srs_wait_in_the_outbox_until_the_pacs_is_back(tmp_path, model_file):
    agent = PacsAgent(tmp_path, model_file)
    pacs_port = free_port()
    agent.configure(pacs_port, send_retries="2")  # nothing listens there yet
    orthanc = None
    try:
        agent.start()
        paths = make_images(tmp_path / "in", 2, seed=5)
        proc = storescu(agent.port, "MEDFL", paths)
        assert proc.stdout.count("Received Store Response (Success)") == 2, proc.stdout
        wait_until("both scored", lambda: sum(r["status"] == "scored" for r in agent.audit()) == 2, timeout=60)
        time.sleep(3)  # several failed deliveries
        assert all(r["status"] == "scored" for r in agent.audit())
        assert len(list((tmp_path / "state" / "pacs" / "outbox").rglob("*.dcm"))) == 2
        (tmp_path / "late-pacs").mkdir()
        orthanc = Orthanc(tmp_path / "late-pacs", agent.port, dicom_port=pacs_port)
        wait_until("delivery once the PACS is up", lambda: len(orthanc.sr_reports()) == 2, timeout=90, every=1.0)
        wait_until("audit says sent", lambda: all(r["status"] == "sent" for r in agent.audit()), timeout=10)
        assert "SR delivery failed" in agent.log()
    finally:
        agent.close()
        if orthanc is not None:
            orthanc.close()


def test_agent_serve_scores_with_the_newest_federated_model(federation, tmp_path):
    fed = federation
    fed.add_agent("h-a", seed=0)
    fed.add_agent("h-b", seed=1)
    pacs_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", pacs_port)
    try:
        cfg = fed.root / "h-a" / "agent.toml"
        cfg.write_text(cfg.read_text() + f"""
[pacs]
enabled = true
bind = "127.0.0.1"
port = {pacs_port}

[pacs.destination]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc.dicom_port}
""")
        fed.start_coordinator()
        fed.start_agent("h-a")
        fed.start_agent("h-b")
        fed.wait_online(2)
        job_id = fed.submit(rounds=2, min_agents=2)
        assert fed.wait_job(job_id).status == "done"
        paths = make_images(tmp_path / "in", 2, seed=6)
        proc = storescu(orthanc.dicom_port, "ORTHANC", paths)
        assert proc.returncode == 0, proc.stdout
        wait_until("2 SRs", lambda: len(orthanc.sr_reports()) == 2, timeout=90)
        def audit_rows():
            db = sqlite3.connect(fed.root / "h-a" / "state" / "pacs" / "audit.sqlite")
            try:
                return db.execute("SELECT model_id, model_round, status FROM scans").fetchall()
            finally:
                db.close()

        # the SR lands in Orthanc a moment before the agent records the delivery
        wait_until("both deliveries recorded", lambda: all(r[2] == "sent" for r in audit_rows()), timeout=30)
        rows = audit_rows()
        assert len(rows) == 2 and all(r == (f"cnn:{job_id}:round-2", 2, "sent") for r in rows), rows
    finally:
        orthanc.close()
