"""``medfl-coordinator``: the operator's command line (init, serve, nodes, jobs, status)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

from coordinator.statusview import aggregation_label, status_dict
from medfl.config_search import COORDINATOR
from medfl.errors import StateError
from medfl.exits import ExitCode, die, run_command
from medfl.safetext import escape

__all__ = ["aggregation_label", "main", "status_dict"]  # the status view re-exported (older imports)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfl-coordinator", description="medfl coordinator daemon and operator tools")
    sub = p.add_subparsers(dest="cmd", required=True)

    init = sub.add_parser("init", help="create the coordinator's key pair and coordinator.toml")
    init.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("."), help="folder to create (default .)")
    init.add_argument("--bind", default="tcp://0.0.0.0:7777",
                      help="ZeroMQ endpoint agents connect to (default %(default)s)")
    init.add_argument("--inference-bind", default=None,
                      help="endpoint of the encrypted-inference model server (default: --bind's host, port 7778)")
    init.add_argument("--name", default="coordinator")
    init.add_argument("--web-bind", default="127.0.0.1:7790",
                      help="HOST:PORT of the status page and /metrics (default %(default)s: this machine only)")
    init.add_argument("--force", action="store_true", help="overwrite an existing configuration and keys")
    init.add_argument("--state-dir", type=pathlib.Path, default=None,
                      help="where the daemon keeps its database and checkpoints (default: state/ beside the config)")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", type=pathlib.Path, default=None, help=COORDINATOR.help())
        return sp

    sv = with_config(sub.add_parser("serve", help="run the daemon"))
    sv.add_argument("--log-format", choices=["text", "json"], default=None,
                    help="json: one object per line (ts, level, logger, msg, fields) for the journal "
                    "(default: MEDFL_LOG_FORMAT, else text)")
    with_config(sub.add_parser("web-token", help="write a fresh bearer token for the status page (0600 file) and "
                               "print it; clients off this machine send 'Authorization: Bearer TOKEN'"))
    bk = with_config(sub.add_parser("backup", help="copy the store (SQLite online backup) and checkpoints to DIR, "
                                    "consistent while the daemon runs"))
    bk.add_argument("dir", type=pathlib.Path, help="a new or empty folder")
    rs = with_config(sub.add_parser("restore", help="verify a backup folder and make it this coordinator's state "
                                    "(the daemon must be stopped)"))
    rs.add_argument("dir", type=pathlib.Path, help="a folder written by 'backup'")
    rs.add_argument("--force", action="store_true", help="replace a non-empty state_dir (kept aside, renamed)")
    nodes = sub.add_parser("nodes", help="enrolled agents")
    nsub = nodes.add_subparsers(dest="nodes_cmd", required=True)
    with_config(nsub.add_parser("list", help="list known agents (pending ones tried to connect)"))
    ap = with_config(nsub.add_parser("approve", help="approve an agent by fingerprint or public key file"))
    ap.add_argument("who", help="SHA256:... fingerprint, a .key file, or a Z85 public key")
    ap.add_argument("--name", default="", help="a name for the agent, kept over the one it gives in HELLO "
                    "(default: the name it gives)")
    rv = with_config(nsub.add_parser("revoke", help="revoke an agent"))
    rv.add_argument("fingerprint")
    fg = with_config(nsub.add_parser("forget", help="delete a pending or revoked agent's record"))
    fg.add_argument("fingerprint")
    iv = with_config(nsub.add_parser("invite", help="write an invitation file for a hospital: 'medfl-agent enroll "
                                     "FILE' there creates its key and approves it, once"))
    iv.add_argument("--name", required=True, help="the hospital's name, as the federation will know it")
    iv.add_argument("--expires", default="72h", help="valid for this long, e.g. 72h, 7d, 30m (default 72h)")
    iv.add_argument("--endpoint", default=None, help="the address agents reach, e.g. tcp://fl.example.org:7777 "
                    "(default: [coordinator] bind, a wildcard host replaced by this machine's name)")
    iv.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                    help="file or folder (default: ./NAME.medfl)")
    with_config(nsub.add_parser("invitations", help="list invitations: open, used (by which key) or expired"))
    pr = with_config(nsub.add_parser("prune", help="delete pending (or revoked) records not seen for a while"))
    pr.add_argument("--older-than", default="0s", help="e.g. 7d, 12h, 30m, 45s (default: 0s, every one)")
    pr.add_argument("--revoked", action="store_true", help="prune revoked records instead of pending ones")
    pr.add_argument("--invitations", action="store_true", help="prune used or expired invitations instead")

    jobs = sub.add_parser("jobs", help="federated jobs")
    jsub = jobs.add_subparsers(dest="jobs_cmd", required=True)
    sm = with_config(jsub.add_parser("submit", help="queue a job file"))
    sm.add_argument("job_file", type=pathlib.Path)
    with_config(jsub.add_parser("list", help="list jobs"))
    cn = with_config(jsub.add_parser("cancel", help="cancel a job"))
    cn.add_argument("job_id")

    dl = sub.add_parser("dealer", help="run the crypto provider (dealer) of encrypted inference, its own process")
    dl.add_argument("--bind", default="tcp://0.0.0.0:7779",
                    help="endpoint model servers connect to (default %(default)s)")
    dl.add_argument("--key", type=pathlib.Path, required=True, help="the dealer's secret key file")
    dl.add_argument("--create-key", action="store_true", help="create the key pair if --key does not exist")
    dl.add_argument("--allow", action="append", default=[], metavar="KEY",
                    help="public key (file or Z85) of a model server allowed to ask (repeat)")
    dl.add_argument("--pool", type=int, default=0, metavar="N",
                    help="keep up to N sessions of material ready for the last plan (bounded; default 0)")
    dl.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="generate the material on the host or in bulk on a GPU (default: MEDFL_SMPC_DEVICE, else cpu)")

    ms = sub.add_parser("model-server", help="run a model server for encrypted inference in its own process")
    ms.add_argument("--config", type=pathlib.Path, default=None,
                    help="coordinator.toml: its [inference] table, key, approved agents and status store")
    ms.add_argument("--checkpoint", type=pathlib.Path, default=None, help="safetensors model to serve")
    ms.add_argument("--bind", default=None, help="endpoint data owners connect to")
    ms.add_argument("--key", type=pathlib.Path, default=None, help="secret key file (default: the coordinator's)")
    ms.add_argument("--allow", action="append", default=[], metavar="KEY",
                    help="without --config: public key of a data owner allowed in (repeat)")
    ms.add_argument("--dealer", default=None, help="the dealer's endpoint")
    ms.add_argument("--dealer-key", default=None, help="the dealer's public key (file or Z85), pinned")
    ms.add_argument("--calibration-dir", type=pathlib.Path, default=None, help="representative images")
    ms.add_argument("--image-size", type=int, default=None,
                    help="input side when the checkpoint's metadata lacks image_size (default 64)")
    ms.add_argument("--timeout", type=float, default=None, help="abort a session after this silence (s)")
    ms.add_argument("--status-file", type=pathlib.Path, default=None, help="write session records here (JSON)")

    st = with_config(sub.add_parser("status", help="daemon, agents, jobs, rounds and inference sessions"))
    st.add_argument("--json", action="store_true",
                    help="machine-readable output; per job final_val_auc, final_epsilon and delta (from the last "
                    "completed round) and rounds_table (keys: coordinator.statusview.status_dict's docstring)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``medfl-coordinator``."""
    args = _parser().parse_args(argv)
    commands = {"init": _init, "serve": _serve, "nodes": _nodes, "jobs": _jobs, "status": _status,
                "dealer": _dealer, "model-server": _model_server, "web-token": _web_token, "backup": _backup,
                "restore": _restore}
    run_command(commands[args.cmd], args)


def _load(args: argparse.Namespace):
    from coordinator.config import load_config

    return load_config(COORDINATOR.find(args.config))


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
    inference_bind = args.inference_bind or _inference_bind(args.bind)
    root.mkdir(parents=True, exist_ok=True)
    pair = generate_keypair()
    pub, sec = write_keypair(root / "keys", "coordinator", pair, overwrite=args.force)
    state_dir = str(args.state_dir.resolve()) if args.state_dir else "state"
    doc = {"coordinator": {"name": args.name, "bind": args.bind, "state_dir": state_dir},
           "keys": {"secret_key_file": str(sec.relative_to(root))},
           "transport": {"curve": True, "max_message_mb": 256},
           "liveness": {"agent_timeout_s": 20.0, "eval_deadline_s": 120.0}}
    cfg_path.write_text("# medfl coordinator configuration (see README: 'Run a coordinator')\n" + tomli_w.dumps(doc)
                        + _inference_table(inference_bind)
                        + "\n[web]  # status page, /status.json and Prometheus /metrics (read-only); loopback clients "
                          "need no token,\n# others send the bearer token of 'medfl-coordinator web-token'\n"
                        + tomli_w.dumps({"enabled": True, "bind": args.web_bind}))
    print(f"wrote {cfg_path}")
    print(f"coordinator public key: {pub}  (fingerprint {fingerprint(pair.public)})")
    print("hand this public key file to every hospital; agents pin it.")


def _inference_bind(bind: str) -> str:
    """The model server's endpoint for ``init --bind``: the same host on port 7778 (ipc: a sibling socket)."""
    head, sep, port = bind.rpartition(":")
    if bind.startswith("tcp://") and sep and port.isdigit():
        if port == "7778":
            raise StateError(f"--bind {bind} takes port 7778, the model server's default; give --inference-bind "
                             "(e.g. tcp://0.0.0.0:7780) or bind the coordinator to another port")
        return f"{head}:7778"
    if bind.startswith("ipc://"):
        return f"{bind}-inference"
    raise StateError(f"cannot derive the model server's endpoint from --bind {bind!r}; give --inference-bind "
                     "(e.g. tcp://0.0.0.0:7778)")


def _inference_table(bind: str) -> str:
    """The ``[inference]`` table ``init`` writes: off, its bind, and the keys to set to turn it on, commented."""
    import tomli_w

    host = bind.rpartition(":")[0] if bind.startswith("tcp://") else "tcp://127.0.0.1"
    dealer = f"{host}:7779" if "0.0.0.0" not in host and "*" not in host else "tcp://127.0.0.1:7779"
    return ("\n[inference]  # encrypted inference: the model server 'serve' hosts for the agents\n"
            + tomli_w.dumps({"enabled": False, "bind": bind, "timeout_s": 60.0})
            + "# to turn it on: start a dealer (medfl-coordinator dealer --key keys/dealer.key_secret --create-key\n"
              "# --allow keys/coordinator.key), set enabled = true above, and uncomment and edit:\n"
              f"# dealer = {tomli_w.dumps({'d': dealer})[4:].strip()}  # the dealer's endpoint (its --bind)\n"
              '# dealer_key_file = "keys/dealer.key"  # the dealer\'s public key, pinned (relative to this file)\n'
              '# checkpoint = "state/checkpoints/<job>/round-0005.safetensors"  # default: the newest federated '
              "model\n"
              '# calibration_dir = "calibration"  # representative images for the fixed-point scales; default: '
              "synthetic ones\n")


def _serve(args: argparse.Namespace) -> None:
    from coordinator.service import CoordinatorService
    from coordinator.statelock import StateLock
    from medfl.logs import setup_logging, stop_on_signals

    setup_logging("coordinator", fmt=args.log_format)
    cfg = _load(args)
    lock = StateLock(cfg.coordinator.state_dir, purpose="medfl-coordinator serve").acquire()
    try:
        service = CoordinatorService(cfg)
    except Exception as exc:
        import zmq

        if isinstance(exc, zmq.ZMQError) and exc.errno == getattr(zmq, "EADDRINUSE", 98):
            die(ExitCode.PORT_IN_USE, f"cannot bind {cfg.coordinator.bind}: {exc}")
        raise
    shutdown = stop_on_signals(service.stop)
    service.serve()
    lock.release()
    shutdown.finish()


def _web_token(args: argparse.Namespace) -> None:
    from coordinator.web import write_token

    cfg = _load(args)
    token = write_token(cfg.web_token_file)
    print(f"wrote {cfg.web_token_file} (mode 0600); restart the daemon to use it. Clients off this machine send:")
    print(f"Authorization: Bearer {token}")


def _backup(args: argparse.Namespace) -> None:
    from coordinator.backup import backup

    t0 = time.monotonic()
    res = backup(_load(args).coordinator.state_dir, args.dir)
    print(f"backed up {res.files} file(s), {res.bytes / 2**20:.1f} MiB, {res.rounds} round(s) to {res.path} in "
          f"{time.monotonic() - t0:.2f} s; restore with 'medfl-coordinator restore {res.path}'")


def _restore(args: argparse.Namespace) -> None:
    from coordinator.backup import restore

    res = restore(args.dir, _load(args).coordinator.state_dir, force=args.force)
    print(f"restored {res.files} file(s), {res.bytes / 2**20:.1f} MiB, {res.rounds} round(s) into {res.path}; "
          "start the daemon: a job that was running resumes after its last backed-up round")


def _dealer(args: argparse.Namespace) -> None:
    import threading

    from coordinator.inference import make_dealer, public_keys
    from medfl.logs import setup_logging, stop_on_signals
    from medfl.wire import fingerprint, generate_keypair, read_keypair, write_keypair

    setup_logging("dealer")
    key: pathlib.Path = args.key
    if not key.exists() and args.create_key:
        name = key.name.removesuffix("_secret").removesuffix(".key")
        pub, key = write_keypair(key.parent, name, generate_keypair())
        print(f"dealer public key: {pub}; give it to the model servers and the agents (they pin it)")
    keys = read_keypair(key)
    if not args.allow:
        die(ExitCode.USAGE, "give at least one --allow KEY: the model servers that may ask this dealer")
    if args.pool < 0:
        die(ExitCode.USAGE, f"--pool must be >= 0, got {args.pool}")
    from medfl.smpc.device import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        die(ExitCode.USAGE, f"dealer --device: {exc}")
    service = make_dealer(bind=args.bind, keys=keys, allowed=public_keys(args.allow), pool=args.pool, device=device)
    stop = threading.Event()
    shutdown = stop_on_signals(stop.set)
    print(f"dealer {fingerprint(keys.public)} listening on {service.channel.endpoint} (pool {args.pool}, "
          f"generating on {device})",
          flush=True)
    try:
        service.serve(stop)
    finally:
        service.channel.close()
    shutdown.finish()


def _model_server(args: argparse.Namespace) -> None:
    import threading

    from coordinator.inference import load_served, make_model_server, public_keys, store_writer
    from medfl.logs import setup_logging, stop_on_signals
    from medfl.wire import read_keypair, read_public_key

    setup_logging("model-server")
    cfg = _load(args) if args.config is not None else None
    inf = cfg.inference if cfg is not None else None
    checkpoint = args.checkpoint or (inf.checkpoint if inf else None)
    bind = args.bind or (inf.bind if inf else None)
    dealer = args.dealer or (inf.dealer if inf else None)
    dealer_key_src = args.dealer_key or (str(inf.dealer_key_file) if inf and inf.dealer_key_file else None)
    key_file = args.key or (cfg.keys.secret_key_file if cfg else None)
    missing = [n for n, v in (("--checkpoint", checkpoint), ("--bind", bind), ("--dealer", dealer),
                              ("--dealer-key", dealer_key_src), ("--key", key_file)) if not v]
    if missing:
        die(ExitCode.USAGE, f"model-server needs {', '.join(missing)} (or --config with an [inference] table)")
    keys = read_keypair(pathlib.Path(str(key_file)))
    if cfg is not None:
        from coordinator.store import Store

        store = Store(cfg.db_path)
        allowed_store = store.is_approved

        def is_allowed(k: bytes) -> bool:
            return allowed_store(k.decode("ascii") if isinstance(k, bytes) else str(k))

        on_change = store_writer(cfg.db_path)
    else:
        allowed = public_keys(args.allow)
        if not allowed:
            die(ExitCode.USAGE, "without --config give at least one --allow KEY (a data owner's public key)")

        def is_allowed(k: bytes) -> bool:
            return bytes(k) in allowed

        on_change = None
    if args.status_file is not None:
        status_file: pathlib.Path = args.status_file

        def on_change(records: list[dict[str, Any]]) -> None:  # noqa: F811 - the file wins over the store
            tmp = status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(records, indent=1))
            tmp.replace(status_file)

    cal = args.calibration_dir or (inf.calibration_dir if inf else None)
    served = load_served(pathlib.Path(str(checkpoint)), calibration_dir=cal, image_size=args.image_size)
    timeout = args.timeout or (inf.timeout_s if inf else 60.0)
    server = make_model_server(served=served, bind=str(bind), keys=keys, is_allowed=is_allowed, dealer=str(dealer),
                               dealer_key=read_public_key(str(dealer_key_src)), timeout_s=timeout,
                               on_change=on_change)
    stop = threading.Event()
    shutdown = stop_on_signals(stop.set)
    print(f"model server for {served.name}{list(served.in_shape)} listening on {server.channel.endpoint}",
          flush=True)
    try:
        server.serve(stop)
    finally:
        server.channel.close()
        server.dealer.close()
    shutdown.finish()


def _nodes(args: argparse.Namespace) -> None:
    from coordinator.enrollment import approve, node_table
    from medfl.wire import check_fingerprint

    store = _store(args)
    if args.nodes_cmd == "list":
        print("\n".join(node_table(store)))
    elif args.nodes_cmd == "approve":
        print("\n".join(approve(store, args.who, name=args.name)))
    elif args.nodes_cmd == "revoke":
        row = store.revoke_node(check_fingerprint(args.fingerprint))
        print(f"revoked {row.fingerprint}; its next connection attempt is refused")
    elif args.nodes_cmd == "forget":
        row = store.forget_node(check_fingerprint(args.fingerprint))
        print(f"forgot {row.status} {row.fingerprint}; if it tries again it is recorded anew as pending")
    elif args.nodes_cmd in ("invite", "invitations"):
        from coordinator.invitations import invitation_table, invite_command

        lines = invite_command(_load(args), store, args, _duration_s(args.expires)) \
            if args.nodes_cmd == "invite" else invitation_table(store)
        print("\n".join(lines))
    elif args.nodes_cmd == "prune" and args.invitations:
        n = store.prune_invitations(older_than_s=_duration_s(args.older_than))
        print(f"pruned {n} used or expired invitation(s) older than {args.older_than}; their keys are no longer "
              "admitted, so an agent still holding one is refused at the handshake")
    elif args.nodes_cmd == "prune":
        status = "revoked" if args.revoked else "pending"
        n = store.prune_nodes(status=status, older_than_s=_duration_s(args.older_than))
        print(f"pruned {n} {status} record(s) not seen for {args.older_than}")


def _duration_s(text: str) -> float:
    """Seconds in a duration such as 7d, 12h, 30m or 45s."""
    from medfl.errors import ConfigError

    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    t = text.strip().lower()
    try:
        if t and t[-1] in units and float(t[:-1]) >= 0:
            return float(t[:-1]) * units[t[-1]]
    except ValueError:
        pass
    raise ConfigError([("--older-than", f"must be a number and a unit (d, h, m, s) such as 7d or 12h, got {text!r}")])


def _jobs(args: argparse.Namespace) -> None:
    from medfl.jobspec import load_job

    store = _store(args)
    if args.jobs_cmd == "submit":
        if not args.job_file.is_file():
            die(ExitCode.USAGE, f"job file {args.job_file}: no such file ({args.job_file.absolute()}); give the path "
                                "of the job's TOML file")
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
        print(f"agents online: {', '.join(escape(n, limit=64) for n in d['online']) or 'none'}")
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
            if r.get("client_epsilon") is not None:
                dp += f"  client-level epsilon {r['client_epsilon']:.3f}"
            print(f"  round {r['round']:3d}  agents {r['agents']}  val_auc {auc}  {r['seconds']:.1f} s{dp}")
        if j["rounds_table"]:
            auc = f"{j['final_val_auc']:.4f}" if j["final_val_auc"] is not None else "n/a"
            dp = (f", epsilon {j['final_epsilon']:.3f} at delta {j['delta']:g} (largest over the hospitals)"
                  if j["final_epsilon"] is not None else "")
            if j.get("final_client_epsilon") is not None:
                dp += f", client-level epsilon {j['final_client_epsilon']:.3f} at delta {j['delta']:g} (the federation)"
            dp = dp or ", no differential privacy"
            print(f"  final (round {j['rounds_table'][-1]['round']}): val_auc {auc}{dp}")
    for sess in st["inference_sessions"][-10:]:
        online = f"{sess['online_seconds']:.1f} s online" if sess.get("online_seconds") is not None else ""
        print(f"inference session {sess['session']} {sess['model']} agent {sess['agent'][:23]}: "
              f"{sess['stage']} ({sess['images']} image(s)) {online} {sess['message']}")
    for e in st["events"]:
        print(f"  {time.strftime('%H:%M:%S', time.localtime(e['t']))} {e['kind']}: {e['detail']}")


if __name__ == "__main__":
    main()
