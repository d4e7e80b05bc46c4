"""Operator endpoints at federation scale: /metrics scrape, status page, backup and restore.

    python benchmarks/operator_web.py [--nodes 200] [--jobs 50] [--rounds 20] [--model cnn] [--json PATH]

Builds a coordinator state folder with that many nodes, jobs and completed rounds (each round
with a real safetensors checkpoint of the model's global weights, as the daemon writes them),
serves it with the daemon's own :class:`~coordinator.web.StatusServer` on loopback, and times
over HTTP: a Prometheus scrape (parsed by prometheus-client's parser) and a status page
render (median of 20 each). Then ``backup`` (SQLite online backup + checkpoints + SHA-256
manifest) and ``restore`` (verify, copy, repoint). The reference line beside them is a plain
``shutil.copytree`` of the same folder: the lower bound of any copy (and not consistent while
the daemon writes).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(state: pathlib.Path, *, nodes: int, jobs: int, rounds: int, model: str) -> int:
    """Fill ``state`` like a coordinator that ran ``jobs`` jobs; returns the checkpoint bytes written."""
    import numpy as np

    from coordinator.store import RoundRow, Store
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    store = Store(state / "coordinator.sqlite")
    for i in range(nodes):
        store.approve_node(f"SHA256:{i:043d}", f"key{i:036d}", name=f"hospital-{i:03d}")
    arrays = state_arrays(create_model(model))
    rng = np.random.default_rng(0)
    total = 0
    for j in range(jobs):
        job = store.submit_job({"job": {"name": f"study-{j}", "rounds": rounds}})
        store.set_job_status(job.id, "running" if j == jobs - 1 else "done")
        names = tuple(f"hospital-{k:03d}" for k in rng.choice(nodes, size=8, replace=False))
        for r in range(1, rounds + 1):
            path = state / "checkpoints" / job.id / f"round-{r:04d}.safetensors"
            noisy = {k: (v + rng.standard_normal(v.shape).astype(v.dtype) * 1e-3) if v.dtype.kind == "f" else v
                     for k, v in arrays.items()}
            save_checkpoint(path, noisy, {"job_id": job.id, "round": str(r)})
            total += path.stat().st_size
            store.record_round(RoundRow(job_id=job.id, round=r, attempts=1, agents=len(names), agent_names=names,
                                        num_samples=4000, train_loss=1 / r, val_auc=0.5 + 0.4 * r / rounds,
                                        val_accuracy=0.7, val_loss=1 / r, val_samples=800, seconds=30.0,
                                        finished_at=time.time(), checkpoint=str(path), epsilon=0.3 * r, delta=1e-5,
                                        epsilons={n: 0.3 * r for n in names}))
    store.close()
    return total


def _median_ms(url: str, n: int = 20, check=None) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = resp.read()
        times.append((time.perf_counter() - t0) * 1e3)
        if check is not None:
            check(body)
    return statistics.median(times)


def main() -> None:
    """Print the figures (and write them as JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args()
    from prometheus_client.parser import text_string_to_metric_families

    from coordinator.backup import backup, restore
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.statuspage import render_status
    from coordinator.statusview import status_dict
    from coordinator.store import Store
    from coordinator.web import StatusServer

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        state = root / "state"
        t0 = time.perf_counter()
        ckpt_bytes = build(state, nodes=args.nodes, jobs=args.jobs, rounds=args.rounds, model=args.model)
        print(f"built {args.nodes} nodes, {args.jobs} jobs x {args.rounds} rounds, {ckpt_bytes / 2**20:.1f} MiB of "
              f"checkpoints in {time.perf_counter() - t0:.1f} s")
        store = Store(state / "coordinator.sqlite")
        metrics = CoordinatorMetrics(store, lambda: args.nodes)
        server = StatusServer(host="127.0.0.1", port=0, token=None, metrics=metrics.exposition,
                              page=lambda: render_status(store, coordinator="bench"),
                              status_json=lambda: status_dict(store))
        server.start()
        try:
            def parse(body: bytes) -> None:
                assert sum(1 for _ in text_string_to_metric_families(body.decode())) > 10

            scrape = _median_ms(server.url + "metrics", check=parse)
            page_bytes = len(urllib.request.urlopen(server.url, timeout=30).read())
            page = _median_ms(server.url)
        finally:
            server.stop()
        t0 = time.perf_counter()
        bk = backup(state, root / "bk")
        t_backup = time.perf_counter() - t0
        t0 = time.perf_counter()
        restore(root / "bk", root / "restored" / "state")
        t_restore = time.perf_counter() - t0
        t0 = time.perf_counter()
        shutil.copytree(state, root / "plain-copy")
        t_copy = time.perf_counter() - t0
        store.close()
    res = {"nodes": args.nodes, "jobs": args.jobs, "rounds_per_job": args.rounds, "model": args.model,
           "scrape_ms": scrape, "page_ms": page, "page_kib": page_bytes / 1024, "backup_s": t_backup,
           "backup_mib": bk.bytes / 2**20, "backup_files": bk.files, "restore_s": t_restore,
           "plain_copytree_s": t_copy}
    print(f"{'what':28s} {'medfl':>10s} {'reference':>22s}")
    print(f"{'/metrics scrape (median)':28s} {scrape:8.1f} ms")
    print(f"{'status page (median)':28s} {page:8.1f} ms   ({page_bytes / 1024:.0f} KiB of HTML)")
    print(f"{'backup':28s} {t_backup:8.2f} s  {t_copy:8.2f} s plain copytree   ({bk.bytes / 2**20:.1f} MiB, "
          f"{bk.files} files, sha256 manifest)")
    print(f"{'restore (verify + copy)':28s} {t_restore:8.2f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
