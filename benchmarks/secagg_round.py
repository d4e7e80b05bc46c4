"""A federated round on loopback with secure aggregation vs plain FedAvg, side by side.

    python benchmarks/secagg_round.py [--agents 10] [--rounds 3] [--model resnet18] [--neighbours 0]
                                      [--json benchmarks/results/secagg_round.json]

The coordinator is the product's :class:`coordinator.rounds.JobRun` (ResNet-18: 11.2M float32
parameters) behind a CurveZMQ ROUTER; each agent is its own process with a CurveZMQ DEALER and
the product's agent code path for the round (:class:`agent.secure.SecureRound`,
:func:`medfl.secagg.vector.pack_fit` and the native quantize + mask; or a plain UPDATE with its
weights). Local training is left out on purpose: each agent's "trained" model is the global
model plus a fixed random delta, so the figures are the cost of the round's communication and
aggregation, which is what secure aggregation changes. Both modes run the same job (same
agents, model and number of rounds), one after the other, in fresh processes.

Columns, medians over the rounds:

- ``fit_s``: TRAIN sent -> new global model aggregated (plain: every UPDATE received and
  FedAvg; secure: keys advertised and shared, masked inputs received, masks rebuilt and removed,
  sum decoded);
- ``round_s``: the whole round as the coordinator records it (plus the evaluate stage: the new
  model sent to every agent and the metrics collected, in the clear or by a second secure sum);
- ``MB_up``: bytes the coordinator received per agent per round (tensor frames and headers);
- ``CPU s``: CPU seconds all processes spent in the round (the coordinator's own process time
  plus every agent's user + system time from ``/proc``, on Linux), from TRAIN to the round's row;
  below the table they are split by kind of thread (main, ZeroMQ I/O, exited worker threads) for
  the coordinator and the agents, plain next to secure, with the agents' extra CPU seconds
  compared to ``agents`` times one agent's secure work measured alone (how much sharing the
  cores with the other processes inflates the same work).

Target (DESIGN.md): secure round <= 1.2x the plain round. The agents of a real federation run
on their own machines; here they share this machine's cores, so the agents' masking work is
serialised ``agents / cores`` times over. The table says how many cores there were, and adds a
projection (labelled as such, not a measurement) for agents on their own machines: the plain
round plus one agent's secure work measured alone (pack + quantize + mask) plus the
coordinator's unmask time measured in the secure rounds. Since every process shares the same
cores, a round cannot take less than its CPU seconds over the core count: the table prints that
floor for the secure round next to the target, which tells whether the target can be met on this
machine at all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---- the agent process ------------------------------------------------------------------
def agent_main(index: int, endpoint: str, secret: bytes, public: bytes, server_public: bytes) -> None:
    """One agent: answer TRAIN / EVALUATE and the secure-aggregation messages until BYE.

    Like the product's agent (:mod:`agent.service` with :mod:`agent.rounds`), the local result is computed in a worker
    thread while the socket loop answers the key exchange, and is masked once both are there.
    """
    import queue
    import threading

    from agent.config import PolicySection
    from agent.secure import SecureRound
    from medfl.buffers import default_pool
    from medfl.secagg.envelopes import SECAGG_TO_AGENT
    from medfl.secagg.vector import fit_length, pack_fit, pack_metrics
    from medfl.wire import ClientChannel, Envelope, MessageType, SocketLimits
    from medfl.wire.keys import KeyPair

    chan = ClientChannel(connect=endpoint, keys=KeyPair(public=public, secret=secret), server_public_key=server_public,
                         limits=SocketLimits(max_message_bytes=512 * 2**20))
    rng = np.random.default_rng(index)  # synthetic "training" result; not secret randomness
    delta: dict[str, np.ndarray] = {}
    policy = PolicySection(min_parties=2)
    secure: dict[str, SecureRound] = {}
    results: queue.Queue[tuple[str, Any]] = queue.Queue()
    samples = 100 + 10 * index

    def fit_worker(env: Envelope, run: SecureRound | None) -> None:
        g = env.tensors
        trained = {k: g[k] + delta[k] for k in g}  # stands in for local training
        if run is None:
            results.put(("plain", Envelope(type=MessageType.UPDATE, job=env.job, round=env.round,
                                           body={"num_samples": samples, "train_loss": 0.5}, tensors=trained)))
            return
        vec, _ = pack_fit(g, trained, num_samples=samples, train_loss=0.5, clip_norm=run.clip_norm,
                          sample_cap=run.sample_cap, out=default_pool().empty(fit_length(g), np.float32))
        results.put(("fit", vec))

    chan.send(Envelope(type=MessageType.HELLO, body={"name": f"bench-{index}"}))
    while True:
        while not results.empty():
            kind, value = results.get()
            for out in [value] if kind == "plain" else secure[kind].set_vector(value):
                chan.send(out)
        env = chan.recv(timeout_ms=5)
        if env is None:
            continue
        if env.type == MessageType.BYE:
            break
        if env.type == MessageType.TRAIN:
            if not delta:
                delta = {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in env.tensors.items()}
            run = None
            if "secure" in env.body:
                run = SecureRound(job=str(env.job), round=int(env.round or 0), params=env.body["secure"], policy=policy)
                secure = {"fit": run}
                chan.send(run.start())
            threading.Thread(target=fit_worker, args=(env, run), daemon=True).start()
        elif env.type == MessageType.EVALUATE:
            metrics = {"n": 50.0, "auc": 0.8, "accuracy": 0.75, "loss": 0.5}
            if "secure" in env.body:
                run = SecureRound(job=str(env.job), round=int(env.round or 0), params=env.body["secure"], policy=policy)
                secure["evaluate"] = run
                chan.send(run.start())
                for out in run.set_vector(pack_metrics(metrics, clip_norm=run.clip_norm, sample_cap=run.sample_cap)):
                    chan.send(out)
            else:
                chan.send(Envelope(type=MessageType.METRICS, job=env.job, round=env.round, body=metrics))
        elif env.type in SECAGG_TO_AGENT:
            for out in secure[str(env.body["phase"])].on_message(env):
                chan.send(out)
    chan.close()


# ---- the coordinator side ----------------------------------------------------------------
def _stat_seconds(stat: str) -> float:
    """User + system CPU seconds in the text of a ``/proc/<pid>[/task/<tid>]/stat`` file."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15 of stat)


def _cpu_seconds(pids: list[int]) -> float | None:
    """CPU seconds used so far by this process and the agent processes ``pids`` (None off Linux)."""
    total = time.process_time()
    for pid in pids:
        try:
            total += _stat_seconds(pathlib.Path(f"/proc/{pid}/stat").read_text())
        except OSError:
            return None
    return total


def _cpu_split(pids: list[int]) -> dict[str, float] | None:
    """CPU seconds so far by kind of thread (Linux ``/proc``; None elsewhere).

    ``coordinator_main`` / ``coordinator_zmq_io`` and ``agents_main`` / ``agents_zmq_io``: the
    live threads of the coordinator and of the agents, the ZeroMQ I/O threads (CurveZMQ
    encryption, TCP) apart; "main" is every other live thread, i.e. the Python main thread with
    its OpenMP workers. ``agents_total`` also holds threads that have exited (an agent's
    local-result and premask threads, with their OpenMP teams), so ``agents_total -
    agents_main - agents_zmq_io`` over an interval is what those threads used.
    """
    out = dict.fromkeys(("coordinator_main", "coordinator_zmq_io", "agents_main", "agents_zmq_io", "agents_total"), 0.0)
    try:
        for who, pid in [("coordinator", os.getpid())] + [("agents", p) for p in pids]:
            if who == "agents":
                out["agents_total"] += _stat_seconds(pathlib.Path(f"/proc/{pid}/stat").read_text())
            for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
                try:
                    stat = (task / "stat").read_text()
                except OSError:  # the thread exited between the listing and the read
                    continue
                name = stat.split("(", 1)[1].rsplit(")", 1)[0]
                out[f"{who}_{'zmq_io' if name.startswith('ZMQbg') else 'main'}"] += _stat_seconds(stat)
    except OSError:
        return None
    return out


def _frames_bytes(env: Any) -> int:
    return sum(int(np.asarray(t).nbytes) for t in env.tensors.values()) + 256


def run_mode(*, secure: bool, agents: int, rounds: int, model: str, neighbours: int) -> dict[str, Any]:
    """Run ``rounds`` rounds of one job with ``agents`` agent processes; return the timings."""
    from coordinator.rounds import JobRun, Stage
    from coordinator.store import Store
    from medfl.jobspec import job_from_dict
    from medfl.secagg.envelopes import SECAGG_FROM_AGENT
    from medfl.wire import MessageType, ServerChannel, SocketLimits, generate_keypair

    server_keys = generate_keypair()
    agent_keys = [generate_keypair() for _ in range(agents)]
    allowed = {k.public for k in agent_keys}
    chan = ServerChannel(bind="tcp://127.0.0.1:*", keys=server_keys, is_allowed=lambda pk: bytes(pk) in allowed,
                         limits=SocketLimits(max_message_bytes=512 * 2**20))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=agent_main, args=(i, chan.endpoint, k.secret, k.public, server_keys.public),
                         daemon=True) for i, k in enumerate(agent_keys)]
    for p in procs:
        p.start()
    tmp = tempfile.TemporaryDirectory(prefix="secagg-round-")
    store = Store(":memory:")
    spec = job_from_dict({"job": {"name": "bench", "model": model, "rounds": rounds, "min_agents": agents,
                                  "round_deadline_s": 600, "image_size": 64},
                          "aggregation": {"secure": secure, "neighbours": neighbours}})
    job_id = store.submit_job(spec.to_dict()).id
    run = JobRun(job_id=job_id, spec=spec, store=store, checkpoint_dir=pathlib.Path(tmp.name), eval_deadline_s=600)
    run.start()
    peers: dict[str, bytes] = {}
    fit_s: list[float] = []
    up_bytes: list[int] = []
    fit_started = 0.0
    received = 0
    stages: list[dict[str, float]] = []
    fit_secure = None
    cpu_start: float | None = None
    cpu_s: list[float] = []
    split_start: dict[str, float] | None = None
    splits: list[dict[str, float]] = []
    deadline = time.monotonic() + 1800

    def send(out):
        for fp, env in out:
            chan.send(peers[fp], env)

    try:
        while not run.finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"benchmark round did not finish: {run.describe()}")
            before = run.state.stage
            if chan.poll(50):
                inc = chan.recv()
                if inc is not None:
                    env, fp = inc.envelope, inc.user_id
                    received += _frames_bytes(env)
                    if env.type == MessageType.HELLO:
                        peers[fp] = inc.peer
                        run.on_accept(fp, str(env.body.get("name")))
                    elif env.type in SECAGG_FROM_AGENT:
                        send(run.on_secagg(fp, env))
                    elif env.type == MessageType.UPDATE:
                        send(run.on_update(fp, env))
                    elif env.type == MessageType.METRICS:
                        send(run.on_metrics(fp, env))
            if before == Stage.EVALUATE and run.state.stage != Stage.EVALUATE and cpu_start is not None:
                pids = [p.pid for p in procs if p.pid is not None]
                cpu_end = _cpu_seconds(pids)
                if cpu_end is not None:
                    cpu_s.append(cpu_end - cpu_start)
                split_end = _cpu_split(pids)
                if split_start is not None and split_end is not None:
                    splits.append({k: split_end[k] - split_start[k] for k in split_end})
                cpu_start = None
            if run.state.stage == Stage.WAITING and len(peers) == agents:
                out = run.tick(set(peers))
                if out:
                    fit_started, received = time.perf_counter(), 0
                    pids = [p.pid for p in procs if p.pid is not None]
                    cpu_start, split_start = _cpu_seconds(pids), _cpu_split(pids)
                send(out)
            elif run.state.stage in (Stage.FIT, Stage.EVALUATE):
                send(run.tick(set(peers)))
            if before == Stage.FIT and run.state.stage == Stage.EVALUATE:
                fit_s.append(time.perf_counter() - fit_started)
                up_bytes.append(received)
                if fit_secure is not None:
                    stages.append(dict(fit_secure.stage_seconds))
            if run.state.stage == Stage.FIT:
                fit_secure = run.state.secure
        if run.state.stage != Stage.DONE:
            raise RuntimeError(f"job ended {run.state.stage}: {run.state.message}")
        rows = store.rounds(job_id)
    finally:
        from medfl.wire import Envelope

        for peer in peers.values():
            chan.send(peer, Envelope(type=MessageType.BYE))
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        chan.close()
        store.close()
        tmp.cleanup()
    params = sum(int(v.size) for v in run.global_arrays.values())
    return {"mode": "secure" if secure else "plain", "aggregation": spec.aggregation.label,
            "agents": agents, "rounds": rounds, "params": params,
            "fit_s": statistics.median(fit_s), "round_s": statistics.median(r.seconds for r in rows),
            "fit_s_all": fit_s, "round_s_all": [r.seconds for r in rows],
            "MB_up_per_agent": statistics.median(up_bytes) / agents / 1e6,
            "cpu_s": statistics.median(cpu_s) if cpu_s else None, "cpu_s_all": cpu_s,
            "cpu_split_s": _split_median(splits), "cpu_split_s_all": splits,
            "secure_fit_stage_close_s": stages}


def _split_median(splits: list[dict[str, float]]) -> dict[str, float] | None:
    """Median over the rounds of each kind of thread's CPU seconds (see :func:`_cpu_split`)."""
    if not splits:
        return None
    out = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    out["agents_exited"] = statistics.median(s["agents_total"] - s["agents_main"] - s["agents_zmq_io"] for s in splits)
    return out


def _agent_secure_compute(model: str, agents: int, neighbours: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` wall and CPU seconds of one agent's secure work (pack_fit + quantize + mask), alone."""
    import torch

    from medfl.models import create_model
    from medfl.models.weights import state_arrays
    from medfl.secagg.masking import MaskSeed, quantize_and_mask
    from medfl.secagg.quantization import choose_spec
    from medfl.secagg.vector import pack_fit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = state_arrays(create_model(model))
    rng = np.random.default_rng(0)  # synthetic update; not secret randomness
    trained = {k: v + (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in g.items()}
    spec = choose_spec(n_agents=agents, clip_norm=10.0)
    peers = agents - 1 if neighbours == 0 or neighbours >= agents - 1 else neighbours
    masks = [MaskSeed(os.urandom(32), 1 if i % 2 else -1) for i in range(peers)] + [MaskSeed(os.urandom(32), 1)]
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        vec, _ = pack_fit(g, trained, num_samples=100, train_loss=0.5, clip_norm=10.0, sample_cap=10_000)
        quantize_and_mask(vec, spec=spec, masks=masks, nonce=os.urandom(12), rounding_seed=1)
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return best, best_cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run both modes and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--neighbours", type=int, default=0, help="SecAgg+ neighbourhood (0: complete graph)")
    ap.add_argument("--json", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "secagg_round.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MEDFL_TORCH_THREADS", "1")
    plain = run_mode(secure=False, agents=args.agents, rounds=args.rounds, model=args.model, neighbours=0)
    secure = run_mode(secure=True, agents=args.agents, rounds=args.rounds, model=args.model,
                      neighbours=args.neighbours)
    cores = os.cpu_count()
    agent_extra, agent_extra_cpu = _agent_secure_compute(args.model, args.agents, args.neighbours)
    coord_extra = statistics.median(st["finish"] - st["unmask"] for st in secure["secure_fit_stage_close_s"])
    projected = (plain["round_s"] + agent_extra + coord_extra) / plain["round_s"]
    print(f"{args.agents} agents on loopback (CurveZMQ), {args.model} update of {plain['params'] / 1e6:.1f}M params, "
          f"{args.rounds} rounds, {cores} cores shared by coordinator and agents")
    print(f"{'':<10} {'plain':>10} {secure['aggregation']:>10} {'ratio':>8}")
    for key, label in (("fit_s", "fit s"), ("round_s", "round s"), ("MB_up_per_agent", "MB up/agent"),
                       ("cpu_s", "CPU s")):
        if plain[key] is not None and secure[key] is not None:
            print(f"{label:<10} {plain[key]:>10.2f} {secure[key]:>10.2f} {secure[key] / plain[key]:>7.2f}x")
    agents_extra = None
    if plain["cpu_split_s"] is not None and secure["cpu_split_s"] is not None:
        print("CPU s per round by thread (median):")
        for key, label in (("coordinator_main", "coordinator, main thread"),
                           ("coordinator_zmq_io", "coordinator, ZeroMQ I/O thread"),
                           ("agents_main", "agents, main threads (+ OpenMP)"),
                           ("agents_zmq_io", "agents, ZeroMQ I/O threads"),
                           ("agents_exited", "agents, exited threads (result, premask)")):
            a, b = plain["cpu_split_s"][key], secure["cpu_split_s"][key]
            print(f"  {label:<42} {a:>7.2f} {b:>10.2f} {b - a:>+8.2f}")
        agents_extra = secure["cpu_split_s"]["agents_total"] - plain["cpu_split_s"]["agents_total"]
        if agent_extra_cpu > 0:  # a tiny model's work can round to no measurable CPU time
            inflation = agents_extra / (args.agents * agent_extra_cpu)
            print(f"  the agents' extra {agents_extra:.2f} CPU s per round is {inflation:.2f}x {args.agents} x one "
                  f"agent's secure work measured alone ({agent_extra_cpu:.2f} CPU s)")
    floor = secure["cpu_s"] / cores if secure["cpu_s"] is not None and cores else None
    if floor is not None:
        print(f"the secure round's CPU seconds over {cores} cores: it cannot take less than {floor:.2f} s here, "
              f"{floor / plain['round_s']:.2f}x the plain round (target {1.2:.1f}x)")
    print(f"one agent's secure work (pack + quantize + mask, measured alone): {agent_extra:.2f} s wall, "
          f"{agent_extra_cpu:.2f} CPU s; coordinator unmask + decode: {coord_extra:.2f} s")
    print(f"projected round ratio with every agent on its own machine (plain round + one agent's secure work + "
          f"unmask, not measured): {projected:.2f}x")
    result = {"plain": plain, "secure": secure, "ratio_round": secure["round_s"] / plain["round_s"],
              "agent_secure_compute_s": agent_extra, "agent_secure_compute_cpu_s": agent_extra_cpu,
              "coordinator_unmask_s": coord_extra, "agents_extra_cpu_s": agents_extra,
              "secure_round_cpu_floor_s": floor,
              "ratio_secure_cpu_floor_to_plain_round": floor / plain["round_s"] if floor is not None else None,
              "projected_ratio_round_separate_machines": projected,
              "ratio_fit": secure["fit_s"] / plain["fit_s"], "target_ratio": 1.2,
              "machine": {"cpus": cores, "python": platform.python_version(), "platform": platform.platform()},
              "command": " ".join(["python", "benchmarks/secagg_round.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
