"""PACS segmentation latency: an MR series into a real Orthanc, answered by a DICOM SEG.

    python benchmarks/pacs_seg.py [--runs 5] [--slices 64] [--side 64] [--patch 32] [--quiet 2] [--json PATH]

Starts Orthanc (the shipped configuration, its Lua routing extended to CT and MR) and
`medfl-agent pacs serve` with an untrained unet3d (in_channels 1, 2 classes, fixed seed) as
``[pacs] seg_model_file``. Each run sends a new series with DCMTK's storescu to Orthanc and
times from storescu's return (the last instance stored in Orthanc) to the SEG's arrival in
Orthanc (its series polled every 20 ms). The figure includes the quiet period
(``series_quiet_s``), the forwarding by Orthanc, the segmentation (sliding window when the
volume is larger than the patch) and the C-STORE back; the column ``minus_quiet_s`` removes
the quiet period. Prints p50, p95 and max. Needs Debian's orthanc and dcmtk.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        body = r.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body


def wait_for(pred, timeout: float, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise SystemExit("timed out")


def write_series(folder: pathlib.Path, *, run: int, slices: int, side: int) -> tuple[str, list[pathlib.Path]]:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=["bench-study", str(run)])
    series = generate_uid(entropy_srcs=["bench-series", str(run), str(time.time_ns())])
    rng = np.random.default_rng(run)
    z, y, x = np.mgrid[:slices, :side, :side].astype(np.float32)
    vol = 300 + 1500 * np.exp(-(((z - slices / 2) / 8) ** 2 + ((y - side / 2) / 10) ** 2 + ((x - side / 3) / 9) ** 2))
    vol = (vol + rng.normal(0, 40, vol.shape)).clip(0, 4000).astype(np.uint16)
    paths = []
    for i, plane in enumerate(vol):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(i)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study, "frame"])
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Seg", f"B{run}", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20260101", "1200", str(run), "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 1, i + 1, "bench"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [0.0, 0.0, 2.0 * i]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = side, side, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        path = folder / f"mr-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return series, paths


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--quiet", type=float, default=2.0, help="[pacs] series_quiet_s")
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    storescu, echoscu = (shutil.which(t, path="/usr/bin:/usr/local/bin") for t in ("storescu", "echoscu"))
    if shutil.which("Orthanc") is None or storescu is None or echoscu is None:
        raise SystemExit("needs Debian's orthanc and dcmtk packages")
    import torch

    from agent.pacs.seg import seg_uids
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    root = pathlib.Path(tempfile.mkdtemp(prefix="medfl-pacs-seg-"))
    torch.manual_seed(0)
    model = create_model("unet3d", in_channels=1, num_classes=2)
    torch.nn.init.normal_(model.head.weight)
    seg_model = root / "seg.safetensors"
    save_checkpoint(seg_model, state_arrays(model), {"model": "unet3d", "image_size": str(args.patch),
                                                     "model_args": json.dumps({"in_channels": 1, "num_classes": 2})})
    cnn = root / "cnn.safetensors"
    save_checkpoint(cnn, state_arrays(create_model("cnn")), {"model": "cnn", "image_size": "64"})
    agent_port, dicom_port, http_port = free_port(), free_port(), free_port()
    cfg = json.loads((REPO / "agent" / "pacs" / "orthanc" / "orthanc.json").read_text())
    cfg.update({"StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"), "DicomPort": dicom_port,
                "HttpPort": http_port, "LuaScripts": [str(REPO / "agent" / "pacs" / "orthanc" / "medfl-route.lua")]})
    cfg["DicomModalities"]["medfl"] = ["MEDFL", "127.0.0.1", agent_port]
    (root / "orthanc.json").write_text(json.dumps(cfg))
    (root / "agent.toml").write_text("\n".join([
        "[agent]", 'name = "bench"', 'state_dir = "state"', "[coordinator]", 'endpoint = "tcp://127.0.0.1:1"',
        "[data]", 'path = "data"', "[transport]", "curve = false", "[pacs]", "enabled = true", 'ae_title = "MEDFL"',
        'bind = "127.0.0.1"', f"port = {agent_port}", f'model_file = "{cnn}"', f'seg_model_file = "{seg_model}"',
        f"series_quiet_s = {args.quiet}", "[pacs.destination]", 'ae_title = "ORTHANC"', 'host = "127.0.0.1"',
        f"port = {dicom_port}"]) + "\n")
    procs = []
    try:
        with open(root / "orthanc.log", "w") as log:
            procs.append(subprocess.Popen(["Orthanc", str(root / "orthanc.json")], stdout=log,
                                          stderr=subprocess.STDOUT))
        with open(root / "agent.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "agent.cli", "pacs", "serve", "--config",
                                           str(root / "agent.toml")], stdout=log, stderr=subprocess.STDOUT,
                                          cwd=root, env=dict(os.environ, PYTHONPATH=str(REPO))))
        wait_for(lambda: subprocess.run([echoscu, "-aec", "MEDFL", "127.0.0.1", str(agent_port)],
                                        capture_output=True).returncode == 0, 120, 0.5)
        wait_for(lambda: subprocess.run([echoscu, "-aec", "ORTHANC", "127.0.0.1", str(dicom_port)],
                                        capture_output=True).returncode == 0, 60, 0.5)
        latencies = []
        for run in range(args.runs):
            series, paths = write_series(root / f"run-{run}", run=run, slices=args.slices, side=args.side)
            seg_series = seg_uids(series)[0]
            subprocess.run([storescu, "-aec", "ORTHANC", "127.0.0.1", str(dicom_port), *map(str, paths)],
                           check=True, capture_output=True, timeout=300)
            t0 = time.monotonic()

            def arrived(seg_series: str = seg_series) -> bool:
                return any(s["MainDicomTags"].get("SeriesInstanceUID") == seg_series
                           for s in get(http_port, "/series?expand"))
            wait_for(arrived, 300)
            latencies.append(time.monotonic() - t0)
            print(f"run {run}: {latencies[-1]:.2f} s", flush=True)
        lat = np.asarray(latencies)
        out = {"runs": args.runs, "slices": args.slices, "side": args.side, "patch": args.patch,
               "series_quiet_s": args.quiet, "p50_s": float(np.percentile(lat, 50)),
               "p95_s": float(np.percentile(lat, 95)), "max_s": float(lat.max()),
               "p50_minus_quiet_s": float(np.percentile(lat, 50) - args.quiet),
               "p95_minus_quiet_s": float(np.percentile(lat, 95) - args.quiet),
               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
        print(json.dumps(out, indent=2))
        if args.json is not None:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
