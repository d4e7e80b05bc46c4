"""The demo federation: a coordinator and N hospital agents as real processes on loopback.

``medfl demo`` writes a synthetic chest-X-ray data set per hospital (non-IID by site), creates
the coordinator's and every agent's CURVE key pairs, approves the agents, starts the daemons
(``medfl-coordinator serve`` and ``medfl-agent serve``, each its own process), submits a job,
follows it through the operator's ``status --json`` interface, and at the end prints the
per-round table, writes a PNG of the training curves and a JSON summary. It drives the product
only through its command lines, as an operator and three hospitals would.

Differential privacy is on by default: the job trains with DP-SGD at every hospital (the job's
``[privacy]`` table), each hospital's agent.toml caps epsilon per job and in total, and the
table and the JSON report the epsilon each round has reached (``rounds[].epsilon``, at the
summary's ``delta``). ``--no-dp`` runs the same federation without it, for comparison.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from apps import demo_seg
from apps.infer import local_parties
from apps.processes import daemons, free_port
from medfl.data.synthetic import hospital_shifts, write_image_folder
from medfl.errors import MedflError
from medfl.inference import encrypted_session, plain_logits, read_images
from medfl.jobspec import load_job

__all__ = ["DemoOptions", "run_demo"]

MARKER = ".medfl-demo"
#: DP-SGD settings of the demo job (chosen so that 5 rounds stay fast and reach a useful AUC)
DEMO_NOISE_MULTIPLIER = 1.2
DEMO_MAX_GRAD_NORM = 1.0
DEMO_DP_WIDTH = 8
DEMO_DP_BATCH = 96
DEMO_DP_LR = 0.1
#: DP-SGD's utility grows with the records per hospital: with DP the demo writes more of them
DEMO_DP_TRAIN = 1080


def _n_train(opts: DemoOptions) -> int:
    if opts.train_per_agent is not None:
        return opts.train_per_agent
    return DEMO_DP_TRAIN if opts.dp else 360


@dataclass(frozen=True)
class DemoOptions:
    """What ``medfl demo`` runs."""

    agents: int = 3
    rounds: int = 5
    out: pathlib.Path = pathlib.Path("demo-out")
    json_path: pathlib.Path | None = None
    train_per_agent: int | None = None  # default: DEMO_DP_TRAIN with DP, 360 without
    val_per_agent: int = 120
    image_size: int = 64
    model: str = "cnn"
    seed: int = 7
    timeout_s: float = 1800.0
    progress: bool = True
    secure: bool = True
    neighbours: int = 0
    dp: bool = True
    noise_multiplier: float = DEMO_NOISE_MULTIPLIER
    max_grad_norm: float = DEMO_MAX_GRAD_NORM
    delta: float = 1e-5
    max_epsilon_per_job: float = 20.0
    max_total_epsilon: float = 100.0
    encrypted_images: int = 2
    #: "classification" (chest X-rays, the CNN) or "segmentation" (BraTS-like MR volumes, the 3-D U-Net)
    task: str = "classification"
    #: segmentation: cases per hospital (15% held out for validation by each agent)
    cases_per_agent: int = 40
    #: "sample" (DP-SGD at every hospital), "client" (distributed discrete Gaussian inside SecAgg) or "both"
    dp_level: str = "sample"
    client_noise_multiplier: float = 1.0


def _run(args: list[str], **kw: Any) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _prepare_out(out: pathlib.Path) -> None:
    if out.exists():
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} exists and was not made by 'medfl demo'; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by medfl demo; safe to delete\n")


def _write_data(opts: DemoOptions, names: list[str]) -> None:
    shifts = hospital_shifts(opts.agents, seed=opts.seed)
    for i, name in enumerate(tqdm(names, desc="synthetic data", unit="hospital", disable=not opts.progress)):
        write_image_folder(opts.out / name / "data", n_train=_n_train(opts), n_val=opts.val_per_agent,
                           n_test=0, seed=opts.seed * 1000 + i, image_size=opts.image_size, shift=shifts[i])


def _training_toml(opts: DemoOptions) -> str:
    if not opts.dp:
        return """
[training]
local_epochs = 2
batch_size = 32
optimizer = "adam"
lr = 0.001
"""
    # DP-SGD: the noise on a step's averaged gradient has norm about sigma * C * sqrt(params) / batch,
    # so the demo trains a narrower CNN (16k parameters) with larger Poisson batches, plain SGD with
    # momentum, and 1080 training images per hospital; measured in-process on the demo data: AUC
    # 0.96 after 5 rounds at epsilon 5.2 (delta 1e-5); with 360 images AUC 0.75-0.9 at epsilon 9.9
    width = f"model_args = {{ width = {DEMO_DP_WIDTH} }}\n" if opts.model == "cnn" else ""
    return f"""
{width}
[training]
local_epochs = 2
batch_size = {DEMO_DP_BATCH}
optimizer = "sgd"
lr = {DEMO_DP_LR}
momentum = 0.9
"""


def _job_toml(opts: DemoOptions) -> str:
    return f"""# demo job: written by 'medfl demo'
[job]
name = "demo-pneumonia"
model = "{opts.model}"
rounds = {opts.rounds}
min_agents = {opts.agents}
round_deadline_s = 600
max_round_retries = 3
seed = {opts.seed}
image_size = {opts.image_size}
{_training_toml(opts)}
[aggregation]
strategy = "fedavg"
secure = {"true" if opts.secure and opts.agents >= 2 else "false"}   # the coordinator learns only the sum
neighbours = {opts.neighbours}              # 0: SecAgg (complete graph); k >= 2: SecAgg+ with k neighbours
""" + privacy_toml(opts)


def privacy_toml(opts: DemoOptions) -> str:
    """The demo job's [privacy] table ("" without DP): DP-SGD, client-level DP or both."""
    if not opts.dp:
        return ""
    sample = opts.dp_level in ("sample", "both")
    return f"""
[privacy]
level = "{opts.dp_level}"
delta = {opts.delta}
""" + (f"""noise_multiplier = {opts.noise_multiplier}
max_grad_norm = {opts.max_grad_norm}
accountant = "rdp"
""" if sample else "") + (f"""client_noise_multiplier = {opts.client_noise_multiplier}
""" if opts.dp_level != "sample" else "")


def _privacy_summary(opts: DemoOptions) -> dict[str, Any]:
    """The demo JSON's ``privacy``: what protects the data, with its parameters."""
    if not opts.dp:
        return {"enabled": False}
    out: dict[str, Any] = {"enabled": True, "level": opts.dp_level}
    if opts.dp_level in ("sample", "both"):
        out.update(mechanism="DP-SGD (sample-level, at every hospital)", noise_multiplier=opts.noise_multiplier,
                   max_grad_norm=opts.max_grad_norm, accountant="rdp", max_epsilon_per_job=opts.max_epsilon_per_job,
                   max_total_epsilon=opts.max_total_epsilon)
    if opts.dp_level in ("client", "both"):
        out.update(client_mechanism="distributed discrete Gaussian (client-level, inside secure aggregation)",
                   client_noise_multiplier=opts.client_noise_multiplier)
    if opts.dp_level == "client":
        out["mechanism"] = out["client_mechanism"]
    return out


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo federation to completion and return its JSON summary.

    Parameters
    ----------
    opts : DemoOptions
        Number of agents and rounds, output folder, sizes.
    """
    started = time.monotonic()
    out = opts.out.resolve()
    opts = DemoOptions(**{**opts.__dict__, "out": out})
    _prepare_out(out)
    names = [f"hospital-{chr(ord('a') + i)}" if i < 26 else f"hospital-{i}" for i in range(opts.agents)]
    seg = opts.task == "segmentation"
    if seg:
        demo_seg.write_data(out, names, cases=opts.cases_per_agent, seed=opts.seed, progress=opts.progress)
    else:
        _write_data(opts, names)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = out / "coordinator"
    _run(["coordinator.cli", "init", "--dir", str(coord), "--bind", endpoint, "--name", "demo-coordinator"])
    ccfg = str(coord / "coordinator.toml")
    secure = opts.secure and opts.agents >= 2
    for name in names:
        _run(["agent.cli", "init", "--dir", str(out / name), "--name", name, "--coordinator", endpoint,
              "--coordinator-key", str(coord / "keys" / "coordinator.key"), "--data", str(out / name / "data"),
              "--min-parties", str(min(2, opts.agents)),
              "--require-secure-aggregation" if secure else "--no-require-secure-aggregation",
              *(["--allowed-models", demo_seg.SEG_MODEL] if seg else []),
              *(["--max-epsilon-per-job", str(opts.max_epsilon_per_job), "--max-total-epsilon",
                 str(opts.max_total_epsilon)] if opts.dp and opts.dp_level != "client" else [])])
        _run(["coordinator.cli", "nodes", "approve", str(out / name / "keys" / "agent.key"), "--name", name,
              "--config", ccfg])
    job_file = out / "job.toml"
    job_file.write_text(demo_seg.job_toml(rounds=opts.rounds, agents=opts.agents, seed=opts.seed, secure=secure,
                                          neighbours=opts.neighbours, privacy=privacy_toml(opts))
                        if seg else _job_toml(opts))
    logs = out / "logs"
    logs.mkdir()
    cmds = [("coordinator", ["coordinator.cli", "serve", "--config", ccfg])]
    cmds += [(n, ["agent.cli", "serve", "--config", str(out / n / "agent.toml")]) for n in names]
    env = {"MEDFL_TORCH_THREADS": os.environ.get("MEDFL_TORCH_THREADS", "1")}
    with daemons(cmds, {name: logs / f"{name}.log" for name, _ in cmds}, env=env) as procs:
        job_id = _run(["coordinator.cli", "jobs", "submit", str(job_file), "--config", ccfg]).strip()
        job = _follow(opts, ccfg, job_id, procs, logs)
    rounds = [demo_seg.round_row(r) if seg else
              {"round": r["round"], "agents": r["agents"], "agent_names": r["agent_names"],
               "val_auc": r["val_auc"], "val_accuracy": r["val_accuracy"], "val_loss": r["val_loss"],
               "train_loss": r["train_loss"], "seconds": round(r["seconds"], 2), "epsilon": r.get("epsilon"),
               "epsilons": r.get("epsilons") or {}, "client_epsilon": r.get("client_epsilon")}
              for r in job["rounds_table"]]
    summary = {
        "job_id": job_id, "task": opts.task, "status": job["status"], "message": job["message"], "agents": names,
        "rounds": rounds, **({"final_val_dice": rounds[-1]["val_dice"] if rounds else None} if seg else
                             {"final_val_auc": rounds[-1]["val_auc"] if rounds else None}),
        "privacy": _privacy_summary(opts),
        "delta": opts.delta if opts.dp else None,
        "final_epsilon": rounds[-1]["epsilon"] if rounds else None,
        "final_client_epsilon": rounds[-1].get("client_epsilon") if rounds else None,
        "transport": "zmq+curve", "aggregation": _aggregation_label(job_file),
        "checkpoint": job["rounds_table"][-1]["checkpoint"] if rounds else None,
        "wall_seconds": round(time.monotonic() - started, 1), "out": str(out),
    }
    if seg:
        summary["plot"] = str(demo_seg.plot_dice(rounds, out / "dice_per_round.png"))
        if summary["checkpoint"]:
            ckpt = pathlib.Path(summary["checkpoint"])
            summary["masks"] = demo_seg.masks_figure(out, names, ckpt if ckpt.is_absolute() else
                                                     out / "coordinator" / ckpt, out / "masks.png")
    else:
        summary["plot"] = str(_plot(rounds, out / "training_curves.png"))
    if opts.encrypted_images > 0 and summary["checkpoint"] and not seg:
        summary["encrypted_inference"] = _encrypted_inference(opts, pathlib.Path(summary["checkpoint"]), names[0])
    json_path = opts.json_path or out / "summary.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2))
    summary["json"] = str(json_path)
    return summary


def _aggregation_label(job_file: pathlib.Path) -> str:
    """"secagg", "secagg+" (SecAgg+ neighbourhoods smaller than the federation) or "fedavg" (plain)."""
    agg = load_job(job_file).aggregation
    return "fedavg" if agg.label == "plain" else agg.label


def _encrypted_inference(opts: DemoOptions, checkpoint: pathlib.Path, hospital: str) -> dict[str, Any]:
    """Score a few of a hospital's validation images by encrypted inference on the model just trained.

    A dealer and a model server run as separate processes on loopback (CurveZMQ); the model
    server calibrates its ranges on its own images (a synthetic set standing in for the model
    owner's data, not a hospital's), and this process acts as the hospital's data owner.
    """
    if not checkpoint.is_absolute():
        checkpoint = opts.out / "coordinator" / checkpoint
    val = opts.out / hospital / "data" / "val"
    classes = sorted(d for d in val.iterdir() if d.is_dir())
    per_class = [sorted(c.iterdir()) for c in classes]
    paths = [per_class[i % len(per_class)][i // len(per_class)] for i in range(opts.encrypted_images)]
    calib = opts.out / "model-server-calibration"
    write_image_folder(calib, n_train=8, n_val=0, n_test=0, seed=opts.seed * 7919 + 1, image_size=opts.image_size)
    images = read_images(paths, opts.image_size)
    plain = plain_logits(checkpoint, images)
    t0 = time.monotonic()
    try:
        with local_parties(checkpoint, calibration_dir=calib / "train", timeout_s=300.0,
                           image_size=opts.image_size, workdir=opts.out / "encrypted-inference") as lp:
            report = encrypted_session(endpoint=lp["endpoint"], server_key=lp["server_key"],
                                       client_keys=lp["client_keys"], dealer_key=lp["dealer_key"],
                                       model=opts.model, images=images, timeout_s=300.0)
    except MedflError as exc:
        return {"images": len(paths), "error": str(exc)}
    n = len(report.images)
    diffs = [float(np.max(np.abs(im.logits - p))) for im, p in zip(report.images, plain, strict=True)]
    return {"images": n, "paths": [str(p) for p in paths],
            "max_abs_diff": max(diffs),
            "decisions_agree": all(int(np.argmax(im.logits)) == int(np.argmax(p))
                                   for im, p in zip(report.images, plain, strict=True)),
            "scores": [im.score for im in report.images],
            "seconds_per_image": (time.monotonic() - t0) / n,
            "online_seconds_per_image": sum(im.online_seconds for im in report.images) / n,
            "bytes_per_image": sum(im.bytes_online for im in report.images) // n + report.prepare_bytes // n,
            "offline_bytes_per_image": report.bytes_offline // n,
            "rounds_per_image": sum(im.rounds for im in report.images) // n}


def _follow(opts: DemoOptions, ccfg: str, job_id: str, procs: dict[str, subprocess.Popen],
            logs: pathlib.Path) -> dict[str, Any]:
    deadline = time.monotonic() + opts.timeout_s
    bar = tqdm(total=opts.rounds, desc="federated rounds", unit="round", disable=not opts.progress)
    try:
        while True:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited early; see {logs}/{dead[0]}.log")
            st = json.loads(_run(["coordinator.cli", "status", "--json", "--config", ccfg]))
            job = next(j for j in st["jobs"] if j["id"] == job_id)
            done = len(job["rounds_table"])
            if done > bar.n:
                bar.update(done - bar.n)
                last = job["rounds_table"][-1]
                dice = (last.get("val_metrics") or {}).get("dice")
                if last["val_auc"] is not None:
                    bar.set_postfix(val_auc=f"{last['val_auc']:.3f}", agents=last["agents"])
                elif dice is not None:
                    bar.set_postfix(val_dice=f"{dice:.3f}", agents=last["agents"])
            elif st["daemon"] and st["daemon"].get("online") is not None:
                bar.set_postfix_str(f"online: {len(st['daemon']['online'])}/{opts.agents}")
            if job["status"] in ("done", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish in {opts.timeout_s:.0f} s; see {logs}")
            time.sleep(1.0)
    finally:
        bar.close()


def _plot(rounds: list[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["round"] for r in rounds]
    ax1.plot(xs, [r["val_auc"] for r in rounds], "o-", label="validation AUC")
    ax1.plot(xs, [r["val_accuracy"] for r in rounds], "s--", label="validation accuracy")
    ax1.set_ylim(0.4, 1.0)
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
    ax1.set_xlabel("round")
    ax1.set_title("Global model on the hospitals' validation sets")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    ax2.plot(xs, [r["train_loss"] for r in rounds], "o-", label="local training loss")
    ax2.plot(xs, [r["val_loss"] for r in rounds], "s--", label="validation loss")
    ax2.set_xlabel("round")
    ax2.set_title("Loss")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(summary: dict[str, Any]) -> str:
    """The per-round table printed at the end of the demo."""
    if summary.get("task") == "segmentation":
        return demo_seg.format_seg_table(summary)
    delta = summary.get("delta")
    eps_head = f"eps@{delta:g}" if delta else "epsilon"
    lines = [f"{'round':>5} {'agents':>6} {'val_auc':>8} {'val_acc':>8} {'val_loss':>8} {'train_loss':>10} "
             f"{eps_head:>10} {'seconds':>8}"]
    for r in summary["rounds"]:
        eps = r.get("epsilon")
        eps_s = f"{eps:>10.3f}" if eps is not None else f"{'no DP':>10}"
        lines.append(f"{r['round']:>5} {r['agents']:>6} {_f(r['val_auc'])} {_f(r['val_accuracy'])} "
                     f"{_f(r['val_loss'])} {_f(r['train_loss'], 10)} {eps_s} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def _f(v: float | None, w: int = 8) -> str:
    return f"{v:>{w}.4f}" if v is not None else f"{'n/a':>{w}}"
