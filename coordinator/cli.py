"""``medfl-coordinator``: the operator's command line (init, serve, nodes, jobs, status)."""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import time
from typing import Any

from medfl.errors import StateError
from medfl.exits import ExitCode, die, run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfl-coordinator", description="medfl coordinator daemon and operator tools")
    sub = p.add_subparsers(dest="cmd", required=True)

    init = sub.add_parser("init", help="create the coordinator's key pair and coordinator.toml")
    init.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("."), help="folder to create (default .)")
    init.add_argument("--bind", default="tcp://0.0.0.0:7777", help="ZeroMQ endpoint to listen on")
    init.add_argument("--name", default="coordinator")
    init.add_argument("--force", action="store_true", help="overwrite an existing configuration and keys")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", type=pathlib.Path, default=pathlib.Path("coordinator.toml"),
                        help="coordinator.toml (default ./coordinator.toml)")
        return sp

    with_config(sub.add_parser("serve", help="run the daemon"))
    nodes = sub.add_parser("nodes", help="enrolled agents")
    nsub = nodes.add_subparsers(dest="nodes_cmd", required=True)
    with_config(nsub.add_parser("list", help="list known agents (pending ones tried to connect)"))
    ap = with_config(nsub.add_parser("approve", help="approve an agent by fingerprint or public key file"))
    ap.add_argument("who", help="SHA256:... fingerprint, a .key file, or a Z85 public key")
    ap.add_argument("--name", default="", help="a name for the agent (default: the name it gives)")
    rv = with_config(nsub.add_parser("revoke", help="revoke an agent"))
    rv.add_argument("fingerprint")

    jobs = sub.add_parser("jobs", help="federated jobs")
    jsub = jobs.add_subparsers(dest="jobs_cmd", required=True)
    sm = with_config(jsub.add_parser("submit", help="queue a job file"))
    sm.add_argument("job_file", type=pathlib.Path)
    with_config(jsub.add_parser("list", help="list jobs"))
    cn = with_config(jsub.add_parser("cancel", help="cancel a job"))
    cn.add_argument("job_id")

    st = with_config(sub.add_parser("status", help="daemon, agents, jobs and rounds"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``medfl-coordinator``."""
    args = _parser().parse_args(argv)
    commands = {"init": _init, "serve": _serve, "nodes": _nodes, "jobs": _jobs, "status": _status}
    run_command(commands[args.cmd], args)


def _load(args: argparse.Namespace):
    from coordinator.config import load_config

    return load_config(args.config)


def _store(args: argparse.Namespace):
    from coordinator.store import Store

    return Store(_load(args).db_path)


def _init(args: argparse.Namespace) -> None:
    import tomli_w

    from medfl.wire import fingerprint, generate_keypair, write_keypair

    root: pathlib.Path = args.dir
    cfg_path = root / "coordinator.toml"
    if cfg_path.exists() and not args.force:
        raise StateError(f"{cfg_path} exists; use --force to overwrite it (this replaces the coordinator's key)")
    root.mkdir(parents=True, exist_ok=True)
    pair = generate_keypair()
    pub, sec = write_keypair(root / "keys", "coordinator", pair, overwrite=args.force)
    doc = {"coordinator": {"name": args.name, "bind": args.bind, "state_dir": "state"},
           "keys": {"secret_key_file": str(sec.relative_to(root))},
           "transport": {"curve": True, "max_message_mb": 256},
           "liveness": {"agent_timeout_s": 20.0, "eval_deadline_s": 120.0}}
    cfg_path.write_text("# medfl coordinator configuration (see README: 'Run a coordinator')\n" + tomli_w.dumps(doc))
    print(f"wrote {cfg_path}")
    print(f"coordinator public key: {pub}  (fingerprint {fingerprint(pair.public)})")
    print("hand this public key file to every hospital; agents pin it.")


def _serve(args: argparse.Namespace) -> None:
    from coordinator.service import CoordinatorService
    from medfl.logs import setup_logging

    setup_logging("coordinator")
    cfg = _load(args)
    try:
        service = CoordinatorService(cfg)
    except Exception as exc:
        import zmq

        if isinstance(exc, zmq.ZMQError) and exc.errno == getattr(zmq, "EADDRINUSE", 98):
            die(ExitCode.PORT_IN_USE, f"cannot bind {cfg.coordinator.bind}: {exc}")
        raise
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    service.serve()


def _nodes(args: argparse.Namespace) -> None:
    from medfl.wire import fingerprint, read_public_key

    store = _store(args)
    if args.nodes_cmd == "list":
        rows = store.nodes()
        if not rows:
            print("no agents yet: approve one with 'medfl-coordinator nodes approve agent.key'")
        for n in rows:
            print(f"{n.status:9s} {n.fingerprint}  {n.name or '-':20s} last seen {_ago(n.last_seen)}")
    elif args.nodes_cmd == "approve":
        who: str = args.who
        if who.startswith("SHA256:"):
            row = store.approve_node(who, name=args.name)
        else:
            key = read_public_key(who)
            row = store.approve_node(fingerprint(key), key.decode("ascii"), name=args.name)
        print(f"approved {row.fingerprint} {row.name}")
    elif args.nodes_cmd == "revoke":
        row = store.revoke_node(args.fingerprint)
        print(f"revoked {row.fingerprint}; its next connection attempt is refused")


def _jobs(args: argparse.Namespace) -> None:
    from medfl.jobspec import load_job

    store = _store(args)
    if args.jobs_cmd == "submit":
        spec = load_job(args.job_file)
        row = store.submit_job(spec.to_dict())
        print(row.id)
    elif args.jobs_cmd == "list":
        for j in store.jobs():
            total = j.spec["job"]["rounds"]
            print(f"{j.id}  {j.status:9s} {j.name:20s} rounds {j.rounds_done}/{total}  {j.message}")
    elif args.jobs_cmd == "cancel":
        row = store.cancel_job(args.job_id)
        print(f"{row.id} {row.status}")


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    return f"{time.time() - t:.0f} s ago"


def status_dict(store: Any) -> dict[str, Any]:
    """Everything ``status`` shows, as a dict."""
    daemon = json.loads(store.get_meta("daemon") or "null")
    if daemon and daemon.get("state") == "serving" and time.time() - daemon["t"] > 5:
        daemon["state"] = "not responding (stale status; is the daemon running?)"
    jobs = []
    for j in store.jobs():
        jobs.append({"id": j.id, "name": j.name, "status": j.status, "rounds_done": j.rounds_done,
                     "rounds": j.spec["job"]["rounds"], "message": j.message,
                     "aggregation": _aggregation_label(j.spec),
                     "rounds_table": [r.__dict__ for r in store.rounds(j.id)]})
    return {"daemon": daemon, "nodes": [n.__dict__ for n in store.nodes()], "jobs": jobs,
            "events": store.events(limit=10)}


def _aggregation_label(spec: dict) -> str:
    """"secagg", "secagg+" or "plain", as the job file says (secure is the default)."""
    agg = spec.get("aggregation") or {}
    if agg.get("secure", True) is False:
        return "plain"
    return "secagg+" if agg.get("neighbours") else "secagg"


def _status(args: argparse.Namespace) -> None:
    store = _store(args)
    st = status_dict(store)
    if args.json:
        json.dump(st, sys.stdout, indent=2, default=str)
        print()
        return
    d = st["daemon"]
    print(f"daemon: {d['state'] if d else 'never started'}" + (f" on {d.get('endpoint')}" if d else ""))
    if d and d.get("online") is not None:
        print(f"agents online: {', '.join(d['online']) or 'none'}")
    if d and d.get("run"):
        print(f"running: {d['run']}" + (f" ({d['waiting']})" if d.get("waiting") else ""))
    print(f"nodes: {sum(n['status'] == 'approved' for n in st['nodes'])} approved, "
          f"{sum(n['status'] == 'pending' for n in st['nodes'])} pending")
    for j in st["jobs"]:
        print(f"job {j['id']} {j['name']} ({j['aggregation']} aggregation): {j['status']} {j['rounds_done']}/"
              f"{j['rounds']} {j['message']}")
        for r in j["rounds_table"]:
            auc = f"{r['val_auc']:.4f}" if r["val_auc"] is not None else "n/a"
            dp = f"  epsilon {r['epsilon']:.3f} (delta {r['delta']:g})" if r.get("epsilon") is not None else ""
            print(f"  round {r['round']:3d}  agents {r['agents']}  val_auc {auc}  {r['seconds']:.1f} s{dp}")
    for e in st["events"]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['kind']}: {e['detail']}")


if __name__ == "__main__":
    main()
