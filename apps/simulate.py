"""``medfl simulate``: many virtual hospitals on Ray, running the code real agents and coordinators run.

A simulation is a real job run without the network:

- the coordinator side is :class:`coordinator.rounds.JobRun` with its SQLite store and
  checkpoints (the daemon's round logic, aggregation strategies, server optimizers, secure-sum
  server arithmetic and client-level accounting), driven by this process;
- each virtual hospital is an :class:`agent.session.JobSession` over an
  :class:`agent.rounds.RoundWorker`, built from its own agent.toml, data file and state folder
  (the agent's policy checks, local trainer, DP-SGD engine, privacy ledger and budget, SecAgg
  client with its masks and Shamir shares);
- the messages between them are the same :class:`medfl.wire.Envelope` objects the daemons send
  over CurveZMQ, handed over as Ray objects instead.

Sites live in Ray actors (:class:`SiteHost`), many sites per actor, so idle sites cost a few
megabytes each and not a Python process; each actor declares its CPU and GPU share, so the same
command runs on a laptop, on one GPU shared by many sites (``--gpus-per-site 0.1``) or on a
Ray cluster (``--address auto``, after ``ray start`` on each node). Faults come from
:class:`medfl.data.partition.FaultPlan`: a site that drops out of a round is offline for the
whole round; a straggler later than the round's deadline sends its keys and then disappears
before its masked update, so the secure sum rebuilds its masks from the others' shares, as it
does for a real agent whose connection breaks.

Data: either one existing data set per site (``site_data``: any kind the agent's loaders read)
or a synthetic chest-X-ray pool split across the sites by :func:`medfl.data.partition.partition`
(IID, Dirichlet label skew, quantity skew), written per site as an ``.npz`` file that the agent
reads like any other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SimOptions", "SiteHost", "run_simulation", "write_site_data"]

#: what the coordinator's offer grace and tick need: the loop ticks at least this often (seconds)
TICK_S = 0.05


@dataclass
class SimOptions:
    """Everything ``medfl simulate`` takes.

    Attributes
    ----------
    job : Path
        The job file (as ``medfl-coordinator jobs submit`` takes it).
    sites : int
        Virtual hospitals.
    out : Path
        Working folder (replaced if an earlier simulation made it).
    scheme, alpha : str, float
        How the synthetic pool is split (:func:`medfl.data.partition.partition`).
    train_per_site, val_per_site : int
        Mean records per site of the synthetic pool.
    site_data : list of Path, optional
        One existing data set per site instead of the synthetic pool.
    dropout, straggler, delay_s, fault_seed
        The :class:`~medfl.data.partition.FaultPlan` of the run.
    address : str, optional
        Ray cluster address (``"auto"``); None starts a local Ray.
    workers : int
        Ray actors hosting the sites (0: as many as the cluster's CPUs allow at ``cpus_per_site``).
    cpus_per_site, gpus_per_site : float
        Each actor's resources (an actor trains one site at a time).
    seed : int
        Seed of the synthetic pool and the partition.
    """

    job: pathlib.Path
    sites: int = 10
    out: pathlib.Path = pathlib.Path("sim-out")
    scheme: str = "iid"
    alpha: float = 0.5
    train_per_site: int = 64
    val_per_site: int = 32
    site_data: list[pathlib.Path] | None = None
    dropout: float = 0.0
    straggler: float = 0.0
    delay_s: float = 0.0
    fault_seed: int = 0
    address: str | None = None
    workers: int = 0
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    seed: int = 0
    progress: bool = True
    json_path: pathlib.Path | None = None
    policy: dict[str, Any] = field(default_factory=dict)


def _site_name(i: int) -> str:
    return f"site-{i:04d}"


def write_site_data(opts: SimOptions, image_size: int) -> list[pathlib.Path]:
    """Write each site's synthetic ``.npz`` (train and val), split by ``opts.scheme``; return the paths."""
    from medfl.data.partition import partition
    from medfl.data.synthetic import generate

    n = opts.sites
    paths = []
    splits = {}
    for split, per, salt in (("train", opts.train_per_site, 0), ("val", opts.val_per_site, 1)):
        images, labels = generate(per * n, seed=opts.seed * 7919 + salt, image_size=image_size)
        parts = partition(labels, n, scheme=opts.scheme, alpha=opts.alpha, seed=opts.seed + salt,
                          min_per_site=2)
        splits[split] = (images, labels, parts)
    for i in range(n):
        path = opts.out / "sites" / _site_name(i) / "data.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for split, (images, labels, parts) in splits.items():
            idx = parts[i]
            arrays[f"{split}_images"] = np.round(images[idx, 0] * 255.0).astype(np.uint8)
            arrays[f"{split}_labels"] = labels[idx]
        np.savez(path, **arrays)
        paths.append(path)
    return paths


def _agent_toml(name: str, site_dir: pathlib.Path, data: pathlib.Path, *, gpu: bool,
                policy: dict[str, Any]) -> pathlib.Path:
    import tomli_w

    from agent.config import detect_data_kind

    doc = {
        "agent": {"name": name, "state_dir": str(site_dir / "state")},
        # the simulation passes messages between Ray actors; the endpoint is never dialled
        "coordinator": {"endpoint": "inproc://medfl-simulation"},
        "data": {"kind": detect_data_kind(data), "path": str(data)},
        "policy": {"min_parties": 2, "allowed_models": ["cnn", "resnet18", "unet2d", "unet3d"], **policy},
        "training": {"torch_threads": 1, "device": "cuda" if gpu else "cpu"},
        "transport": {"curve": False},
    }
    site_dir.mkdir(parents=True, exist_ok=True)
    path = site_dir / "agent.toml"
    path.write_text("# a virtual hospital of 'medfl simulate'\n" + tomli_w.dumps(doc))
    return path


class SiteHost:
    """A Ray actor hosting many virtual hospitals (one :class:`~agent.session.JobSession` each).

    Parameters
    ----------
    configs : dict of str to str
        Site name to its agent.toml.
    concurrent : int
        Sites that train or validate at once (the actor's CPU share): the others wait their turn,
        so an actor holds one site's activations at a time, not all of its sites'.
    """

    def __init__(self, configs: dict[str, str], concurrent: int = 1):
        import threading

        import torch

        from agent.config import load_config
        from agent.rounds import RoundWorker
        from agent.session import JobSession

        torch.set_num_threads(1)
        gate = threading.Semaphore(max(1, concurrent))
        self.sessions = {}
        for name, path in configs.items():
            cfg = load_config(path)
            self.sessions[name] = JobSession(cfg, RoundWorker(cfg, gate=gate))

    def handle(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Deliver coordinator messages to their sites; the immediate replies per site."""
        return {name: [r for env in envs for r in self.sessions[name].handle(env)] for name, envs in batch.items()}

    def collect(self, timeout_s: float) -> dict[str, list[Any]]:
        """Wait up to ``timeout_s`` for any site's local work to finish; the replies per site."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = {name: replies for name, s in self.sessions.items() if (replies := s.flush())}
            busy = any(s.current is not None for s in self.sessions.values())
            if out or not busy or time.monotonic() >= deadline:
                return out
            time.sleep(0.005)

    def close(self) -> None:
        """Close every site's privacy ledger (the actor is killed next)."""
        for s in self.sessions.values():
            s.work.close()

    def busy(self) -> bool:
        """Whether any hosted site has local work in progress."""
        return any(s.current is not None for s in self.sessions.values())

    def info(self) -> dict[str, Any]:
        """The actor's node, process and peak resident memory (kB)."""
        import ray

        with open("/proc/self/status") as fh:
            peak = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "peak_rss_kb": peak,
                "sites": len(self.sessions)}


def _prepare_out(out: pathlib.Path) -> None:
    marker = out / ".medfl-simulation"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{out} exists and was not made by 'medfl simulate'; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by medfl simulate\n")


def run_simulation(opts: SimOptions) -> dict[str, Any]:
    """Run the job over ``opts.sites`` virtual hospitals to the end; return the JSON summary.

    Raises
    ------
    ConfigError
        The job file is invalid.
    ValueError
        Bad options (no sites, a site_data list of the wrong length, bad fault probabilities).
    """
    import ray
    from tqdm import tqdm

    from coordinator.rounds import JobRun, Stage
    from coordinator.store import Store
    from medfl.data.partition import FaultPlan
    from medfl.jobspec import load_job
    from medfl.wire import MessageType

    started = time.monotonic()
    if opts.sites < 2:
        raise ValueError(f"a simulation needs at least 2 sites, got {opts.sites}")
    if opts.site_data is not None and len(opts.site_data) != opts.sites:
        raise ValueError(f"{len(opts.site_data)} site data sets for {opts.sites} sites; give one per site")
    if not (opts.cpus_per_site > 0 and opts.gpus_per_site >= 0):
        raise ValueError(f"--cpus-per-site must be > 0 and --gpus-per-site >= 0, got {opts.cpus_per_site}, "
                         f"{opts.gpus_per_site}")
    faults = FaultPlan(dropout=opts.dropout, straggler=opts.straggler, delay_s=opts.delay_s, seed=opts.fault_seed)
    spec = load_job(opts.job)
    out = opts.out.resolve()
    opts = dataclasses.replace(opts, out=out)
    _prepare_out(out)
    names = [_site_name(i) for i in range(opts.sites)]
    data = ([pathlib.Path(p).resolve() for p in opts.site_data] if opts.site_data is not None
            else write_site_data(opts, spec.job.image_size))
    configs = {name: str(_agent_toml(name, out / "sites" / name, data[i], gpu=opts.gpus_per_site > 0,
                                     policy=opts.policy))
               for i, name in enumerate(names)}

    if not ray.is_initialized():
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
    cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = opts.workers or max(1, int(cluster_cpus // opts.cpus_per_site))
    workers = min(workers, opts.sites)
    host_cls = ray.remote(num_cpus=opts.cpus_per_site, num_gpus=opts.gpus_per_site)(SiteHost)
    owner = {name: i % workers for i, name in enumerate(names)}
    hosts: list[Any] = [host_cls.remote({n: configs[n] for n in names if owner[n] == w},
                                        max(1, int(opts.cpus_per_site))) for w in range(workers)]
    ray.get([h.busy.remote() for h in hosts])  # every site built (data read, ledgers opened)
    setup_s = time.monotonic() - started

    store = Store(out / "coordinator.sqlite")
    job_id = store.submit_job(spec.to_dict()).id
    run = JobRun(job_id=job_id, spec=spec, store=store, checkpoint_dir=out / "checkpoints")
    run.start()
    store.set_job_status(job_id, "running")

    offline: set[str] = set()      # out of the current round (dropout)
    vanish: set[str] = set()       # stragglers past the deadline: gone once their keys are out
    round_seen = 0

    def deliver(outgoing: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        batches: dict[int, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for fp, env in outgoing:
            if fp in offline:
                continue
            batches[owner[fp]][fp].append(env)
        futures = [hosts[w].handle.remote(dict(b)) for w, b in batches.items()]
        return [(fp, env) for res in ray.get(futures) for fp, envs in res.items() for env in envs]

    def consume(replies: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        nxt: list[tuple[str, Any]] = []
        for fp, env in replies:
            if fp in offline:
                continue
            if fp in vanish and env.type == MessageType.MASKED_INPUT:
                offline.add(fp)   # the straggler misses the deadline: the coordinator sees it leave
                nxt += run.on_offline(fp)
                continue
            nxt += run.on_agent_message(fp, fp, env)
        return nxt

    pending = [o for fp in names for o in run.offer(fp)]
    bar = tqdm(total=spec.job.rounds, desc=f"simulate {opts.sites} sites", unit="round",
               disable=not opts.progress)
    bar.update(len(store.rounds(job_id)))
    round_times: list[float] = []
    while not run.finished:
        if run.state.round != round_seen and run.state.stage == Stage.WAITING:
            # a new round: this round's dropouts disconnect, last round's come back (hello, offer, accept)
            round_seen = run.state.round
            dropped, late = faults.round_faults(round_seen, opts.sites)
            gone = {names[i] for i in dropped}
            for fp in sorted(gone - offline):
                pending += run.on_offline(fp)
            back = sorted(offline - gone)
            offline = gone
            pending += [o for fp in back for o in run.offer(fp)]
            vanish = {names[i] for i, d in late.items() if d > spec.job.round_deadline_s}
        pending += run.tick({n for n in names if n not in offline})
        while pending:
            pending = consume(deliver(pending))
        if run.finished:
            break
        futures = [h.collect.remote(0.2) for h in hosts]
        replies = [(fp, env) for res in ray.get(futures) for fp, envs in res.items() for env in envs]
        pending = consume(replies)
        done = len(store.rounds(job_id))
        if done > bar.n:
            bar.update(done - bar.n)
            last = store.rounds(job_id)[-1]
            round_times.append(last.seconds)
            if last.val_auc is not None:
                bar.set_postfix(val_auc=f"{last.val_auc:.3f}", agents=last.agents)
        if not pending:
            time.sleep(TICK_S)
    bar.close()
    ok = run.state.stage == Stage.DONE
    store.set_job_status(job_id, "done" if ok else "failed", "completed" if ok else run.state.message)
    rows = store.rounds(job_id)
    infos = ray.get([h.info.remote() for h in hosts])
    ray.get([h.close.remote() for h in hosts])
    for h in hosts:
        ray.kill(h)
    store.close()
    wall = time.monotonic() - started
    train_s = wall - setup_s
    summary = {
        "job_id": job_id, "status": "done" if ok else "failed", "message": run.state.message,
        "sites": opts.sites, "workers": workers, "scheme": opts.scheme, "alpha": opts.alpha,
        "faults": dataclasses.asdict(faults), "aggregation": spec.aggregation.label,
        "privacy": {"enabled": spec.privacy.enabled, "level": spec.privacy.level},
        "rounds": [{k: v for k, v in r.__dict__.items() if k not in ("job_id", "finished_at")} for r in rows],
        "final_val_auc": rows[-1].val_auc if rows else None,
        "final_epsilon": rows[-1].epsilon if rows else None,
        "final_client_epsilon": rows[-1].client_epsilon if rows else None,
        "checkpoint": rows[-1].checkpoint if rows else None,
        "setup_seconds": round(setup_s, 2), "run_seconds": round(train_s, 2), "wall_seconds": round(wall, 2),
        "rounds_per_minute": round(60.0 * len(rows) / train_s, 2) if rows and train_s > 0 else None,
        "nodes": sorted({i["node"] for i in infos}),
        "peak_rss_mb": {"driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                        "actors": [round(i["peak_rss_kb"] / 1024, 1) for i in infos]},
        "out": str(out),
    }
    json_path = opts.json_path or out / "summary.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2, default=str))
    summary["json"] = str(json_path)
    return summary
