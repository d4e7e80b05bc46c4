"""PACS scoring latency: a burst of CR images into a real Orthanc, each scored and answered by SR.

    python benchmarks/pacs.py [--images 200] [--models cnn resnet18] [--max-batch 1 8] [--json PATH]

For each model: start Orthanc (the shipped config and Lua routing) and `medfl-agent pacs serve`,
send the burst with DCMTK's storescu, and follow Orthanc's change log (polled every 20 ms) to
time each image from its arrival in Orthanc to the arrival of its SR. Prints p50, p95, max and
images per second, and checks that no image is lost. Needs Debian's orthanc and dcmtk.

Two more columns say where the limit is: ``arrival_per_s``, the rate at which the burst arrived
in Orthanc (images over the span from the first to the last arrival), and ``model_bound_per_s``,
the most images per second the agent's workers could score if they did nothing but the model's
forward pass (measured in this process before the burst: one thread per worker, batches of
``max_batch``, at the model's input size). While the burst arrives faster than the agent can
score, latency grows with each image's place in the queue, whatever the per-image cost.
"""

from __future__ import annotations

import argparse
import io
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


def make_burst(folder: pathlib.Path, n: int, size: int) -> list[pathlib.Path]:
    from PIL import Image

    from medfl.data.dicom import synthetic_cr
    from medfl.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    images, _ = generate(n, seed=42, image_size=256)
    paths = []
    for i in range(n):
        big = np.asarray(Image.fromarray(images[i, 0], mode="F").resize((size, size), Image.Resampling.BILINEAR))
        ds = synthetic_cr(big, patient_id=f"BENCH{i}", bits=12)
        p = folder / f"cr-{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def model_bound(model: str, image_size: int, workers: int, max_batch: int) -> float:
    """Images/s of the model's forward pass alone: ``workers`` single-threaded workers, batches of max_batch."""
    import torch

    from medfl.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = create_model(model).eval()
        x = torch.randn(max_batch, 1, image_size, image_size)
        times = []
        with torch.no_grad():
            net(x)
            for _ in range(3):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
        return workers * max_batch / float(np.median(times))
    finally:
        torch.set_num_threads(threads)


def run_one(model: str, paths: list[pathlib.Path], work: pathlib.Path, workers: int, max_batch: int) -> dict:
    import torch
    from pydicom import dcmread

    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    work.mkdir(parents=True)
    image_size = 224 if model == "resnet18" else 64
    bound = model_bound(model, image_size, workers, max_batch)
    torch.manual_seed(0)
    model_file = work / "model.safetensors"
    save_checkpoint(model_file, state_arrays(create_model(model)), {"model": model, "image_size": str(image_size)})
    agent_port, dicom_port, http_port = free_port(), free_port(), free_port()
    cfg = json.loads((REPO / "agent/pacs/orthanc/orthanc.json").read_text())
    cfg.update({"StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"), "DicomPort": dicom_port,
                "HttpPort": http_port, "LuaScripts": [str(REPO / "agent/pacs/orthanc/medfl-route.lua")],
                "DicomModalities": {"medfl": ["MEDFL", "127.0.0.1", agent_port]}})
    (work / "orthanc.json").write_text(json.dumps(cfg))
    (work / "agent.toml").write_text(f"""
[agent]
name = "bench"
state_dir = "state"
[coordinator]
endpoint = "tcp://127.0.0.1:1"
[data]
path = "data"
[transport]
curve = false
[pacs]
enabled = true
bind = "127.0.0.1"
port = {agent_port}
model_file = "{model_file}"
workers = {workers}
max_batch = {max_batch}
[pacs.destination]
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {dicom_port}
""")
    env = dict(os.environ, PYTHONPATH=str(REPO), MEDFL_TORCH_THREADS="1")
    logs = [open(work / "orthanc.log", "w"), open(work / "agent.log", "w")]  # noqa: SIM115
    procs = [subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=logs[0], stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, "-m", "agent.cli", "pacs", "serve", "--config",
                               str(work / "agent.toml")], stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=work)]
    echoscu = shutil.which("echoscu", path="/usr/bin:/usr/local/bin")
    storescu = shutil.which("storescu", path="/usr/bin:/usr/local/bin")
    try:
        for _ in range(300):
            try:
                get(http_port, "/system")
                if subprocess.run([echoscu, "-aec", "MEDFL", "127.0.0.1", str(agent_port)],
                                  capture_output=True).returncode == 0:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        seen: dict[str, float] = {}
        since = 0
        sender = subprocess.Popen([storescu, "-aec", "ORTHANC", "127.0.0.1", str(dicom_port), *map(str, paths)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        deadline = t0 + 600
        n_sr = 0
        while time.monotonic() < deadline and n_sr < len(paths):
            changes = get(http_port, f"/changes?since={since}&limit=1000")
            now = time.monotonic()
            for c in changes["Changes"]:
                if c["ChangeType"] == "NewInstance":
                    seen.setdefault(c["ID"], now)
            since = changes["Last"]
            n_sr = sum(1 for i in seen if i.startswith("sr:"))
            if changes["Done"]:
                # label SRs as they appear so the loop can stop
                for inst_id in [i for i in seen if not i.startswith(("sr:", "img:"))]:
                    tags = get(http_port, f"/instances/{inst_id}/simplified-tags")
                    seen[("sr:" if tags.get("Modality") == "SR" else "img:") + inst_id] = seen.pop(inst_id)
                time.sleep(0.02)
        sender.wait(timeout=60)
        wall = time.monotonic() - t0
        by_uid: dict[str, float] = {}
        latencies = []
        for key, t in seen.items():
            if key.startswith("img:"):
                by_uid[get(http_port, f"/instances/{key[4:]}/simplified-tags")["SOPInstanceUID"]] = t
        for key, t in seen.items():
            if key.startswith("sr:"):
                sr = dcmread(io.BytesIO(get(http_port, f"/instances/{key[3:]}/file")))
                ref = str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                          .ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                if ref in by_uid:
                    latencies.append(t - by_uid[ref])
        lat = np.array(latencies) if latencies else np.array([np.nan])
        arrivals = sorted(by_uid.values())
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        return {"model": model, "image_size": image_size, "images": len(paths), "received": len(by_uid),
                "srs": len(latencies), "lost": len(paths) - len(latencies), "p50_s": float(np.percentile(lat, 50)),
                "p95_s": float(np.percentile(lat, 95)), "max_s": float(lat.max()),
                "images_per_s": len(latencies) / wall, "wall_s": wall, "workers": workers,
                "max_batch": max_batch, "arrival_span_s": span, "arrival_per_s": (len(arrivals) - 1) / span,
                "model_bound_per_s": bound}
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for fh in logs:
            fh.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024, help="CR image side in pixels (12-bit)")
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-batch", type=int, nargs="+", default=[8],
                    help="[pacs] max_batch; several values run one after the other (A/B in one run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", type=pathlib.Path, default=None, help="keep logs and state in this new folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medfl-pacs-bench-") as tmp:
        root = args.keep or pathlib.Path(tmp)
        paths = make_burst(root / "burst", args.images, args.size)
        rows = []
        for model, mb in [(m, b) for m in args.models for b in args.max_batch]:
            row = run_one(model, paths, root / f"{model}-b{mb}", args.workers, mb)
            rows.append(row)
            print(f"{model:9s} max_batch {mb:3d} {row['images']} images {args.size}px: p50 {row['p50_s']:.2f} s  "
                  f"p95 {row['p95_s']:.2f} s  "
                  f"max {row['max_s']:.2f} s  {row['images_per_s']:.1f} images/s  lost {row['lost']}  (arrived at "
                  f"{row['arrival_per_s']:.1f}/s; model alone {row['model_bound_per_s']:.1f}/s)", flush=True)
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
