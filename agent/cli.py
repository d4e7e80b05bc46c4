"""``medfl-agent``: the hospital's command line (init, serve, fingerprint, check)."""

from __future__ import annotations

import argparse
import pathlib
import shutil

from medfl.config_search import AGENT
from medfl.errors import ConfigError, DataError, StateError
from medfl.exits import run_command

__all__ = ["main"]


STATE_DIR_HELP = "where the agent keeps its state (models, ledger, PACS queues); default: state/ beside agent.toml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfl-agent", description="medfl hospital agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="create this agent's key pair and agent.toml; prints the fingerprint")
    init.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("."))
    init.add_argument("--name", required=True, help="this hospital's name, shown to the operator")
    init.add_argument("--coordinator", required=True, help="coordinator endpoint, e.g. tcp://fl.example.org:7777")
    init.add_argument("--coordinator-key", type=pathlib.Path, required=True,
                      help="the coordinator.key file the operator handed over (pinned)")
    init.add_argument("--data", type=pathlib.Path, required=True,
                      help="data folder (train/<CLASS>/..., val/<CLASS>/...), a .npz file, or segmentation cases "
                           "(a BraTS folder or a Decathlon task folder)")
    init.add_argument("--allowed-models", default="cnn,resnet18",
                      help="comma-separated models this hospital trains (default cnn,resnet18; segmentation: "
                           "unet2d, unet3d)")
    init.add_argument("--min-parties", type=int, default=2, help="refuse aggregates with fewer hospitals")
    init.add_argument("--require-secure-aggregation", action=argparse.BooleanOptionalAction, default=True,
                      help="refuse jobs with plain aggregation (default: require secure aggregation)")
    init.add_argument("--max-epsilon-per-job", type=float, default=None,
                      help="refuse rounds that take a job past this epsilon (default: no limit)")
    init.add_argument("--max-total-epsilon", type=float, default=None,
                      help="refuse rounds that take this data set past this epsilon over all jobs (default: no limit)")
    init.add_argument("--force", action="store_true", help="overwrite an existing configuration and keys")
    init.add_argument("--state-dir", type=pathlib.Path, default=None,
                      help=STATE_DIR_HELP)
    en = sub.add_parser("enroll", help="join a federation with the invitation file the operator sent: creates "
                        "the keys and agent.toml, and the invitation approves the key")
    en.add_argument("invitation", type=pathlib.Path, help="the .medfl file from 'medfl-coordinator nodes invite'")
    en.add_argument("--data", type=pathlib.Path, required=True,
                    help="data folder (train/<CLASS>/..., val/<CLASS>/...) or a .npz file")
    en.add_argument("--dir", type=pathlib.Path, default=pathlib.Path("."), help="where agent.toml and keys/ go")
    en.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the coordinator (default 30)")
    en.add_argument("--force", action="store_true", help="replace an existing agent.toml and key in --dir")
    en.add_argument("--state-dir", type=pathlib.Path, default=None,
                      help=STATE_DIR_HELP)
    pacs = sub.add_parser("pacs", help="the agent as a DICOM node (PACS hooks)")
    psub = pacs.add_subparsers(dest="pacs_cmd", required=True)
    ps = psub.add_parser("serve", help="run only the DICOM node: receive, score, send SRs back")
    ps.add_argument("--config", type=pathlib.Path, default=None, help=AGENT.help())
    inf = sub.add_parser("infer", help="score images by encrypted inference with the federation's model server")
    inf.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE", help="PNG, JPEG or DICOM files")
    inf.add_argument("--encrypted", action="store_true", required=True,
                     help="2PC + dealer (the only mode: the agent does not hold the served model)")
    inf.add_argument("--json", type=pathlib.Path, default=None, help="write the results here")
    inf.add_argument("--config", type=pathlib.Path, default=None, help=AGENT.help())
    stp = sub.add_parser("status", help="what this agent is doing: connection, policy, budget, PACS queue, disk")
    stp.add_argument("--config", type=pathlib.Path, default=None, help=AGENT.help())
    stp.add_argument("--json", action="store_true", help="print the status as JSON")
    dr = sub.add_parser("doctor", help="check config, keys, disk, clock, coordinator, PACS; each failure with a fix")
    dr.add_argument("--config", type=pathlib.Path, default=None, help=AGENT.help())
    dr.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the coordinator (default 5)")
    for name, text in (("serve", "run the agent daemon"), ("fingerprint", "print this agent's key fingerprint"),
                       ("check", "validate agent.toml and the data set, then exit"),
                       ("privacy", "show the privacy ledger: epsilon spent per job and in total on this data")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", type=pathlib.Path, default=None, help=AGENT.help())
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``medfl-agent``."""
    args = _parser().parse_args(argv)
    commands = {"init": _init, "enroll": _enroll, "serve": _serve, "fingerprint": _fingerprint, "check": _check,
                "pacs": _pacs_serve, "privacy": _privacy, "infer": _infer, "status": _status, "doctor": _doctor}
    run_command(commands[args.cmd], args)


def _init(args: argparse.Namespace) -> None:
    import tomli_w

    from agent.config import detect_data_kind
    from medfl.wire import fingerprint, generate_keypair, read_public_key, write_keypair

    root: pathlib.Path = args.dir
    cfg_path = root / "agent.toml"
    if cfg_path.exists() and not args.force:
        raise StateError(f"{cfg_path} exists; use --force to overwrite it (this replaces the agent's key, "
                         "which the operator must then approve again)")
    read_public_key(args.coordinator_key)  # fail early on a bad key file
    root.mkdir(parents=True, exist_ok=True)
    pair = generate_keypair()
    pub, sec = write_keypair(root / "keys", "agent", pair, overwrite=args.force)
    pinned = root / "keys" / "coordinator.key"
    if args.coordinator_key.resolve() != pinned.resolve():
        shutil.copyfile(args.coordinator_key, pinned)
    data = args.data.resolve()
    models = [m.strip() for m in args.allowed_models.split(",") if m.strip()]
    doc = {
        "agent": {"name": args.name, "state_dir": str(args.state_dir.resolve()) if args.state_dir else "state"},
        "coordinator": {"endpoint": args.coordinator, "public_key_file": str(pinned.relative_to(root))},
        "keys": {"secret_key_file": str(sec.relative_to(root))},
        "data": {"kind": detect_data_kind(data), "path": str(data)},
        "policy": {"allowed_models": models, "min_parties": args.min_parties,
                   "require_secure_aggregation": args.require_secure_aggregation,
                   **({"max_epsilon_per_job": args.max_epsilon_per_job} if args.max_epsilon_per_job else {}),
                   **({"max_total_epsilon": args.max_total_epsilon} if args.max_total_epsilon else {})},
        "training": {"torch_threads": 0, "device": "cpu"},
        "transport": {"curve": True, "max_message_mb": 256},
    }
    cfg_path.write_text("# medfl agent configuration (see README: 'Install an agent')\n" + tomli_w.dumps(doc)
                        + _inference_example(args.coordinator))
    print(f"wrote {cfg_path}")
    print(f"agent public key: {pub}")
    print(f"fingerprint: {fingerprint(pair.public)}")
    print("send the public key file (or read the fingerprint) to the coordinator operator, who runs:")
    print(f"  medfl-coordinator nodes approve {pub.name}")


def _enroll(args: argparse.Namespace) -> None:
    import tomli_w

    from agent.enroll import enroll
    from medfl.safetext import escape

    res, doc, cfg_path = enroll(args.invitation, root=args.dir, data=args.data, force=args.force,
                                timeout_s=args.timeout)
    if args.state_dir is not None:  # e.g. the package's /var/lib/medfl/agent, beside /etc/medfl/agent.toml
        doc["agent"]["state_dir"] = str(args.state_dir.resolve())
    head = "# medfl agent configuration, written by 'medfl-agent enroll' (see README: 'Install an agent')\n"
    cfg_path.write_text(head + tomli_w.dumps(doc) + _inference_example(doc["coordinator"]["endpoint"]))
    print(f"enrolled as {escape(res.name, limit=64)!r} in federation {escape(res.coordinator, limit=64)!r}: the "
          "coordinator approved this agent's key")
    print(f"fingerprint: {res.fingerprint}")
    print(f"wrote {cfg_path} (policy: secure aggregation required, at least 2 hospitals; edit [policy] to tighten)")
    print(f"start the agent with: medfl-agent serve --config {cfg_path}")


def _status(args: argparse.Namespace) -> None:
    import json

    from agent.status import agent_status, format_status

    cfg = _load(args)
    st = agent_status(cfg, args.config)
    print(json.dumps(st, indent=2, default=str) if args.json else "\n".join(format_status(st)))


def _doctor(args: argparse.Namespace) -> None:
    from agent.doctor import diagnose, format_checks

    checks = diagnose(AGENT.find(args.config), timeout_s=args.timeout)
    print("\n".join(format_checks(checks)))
    if any(c.state == "fail" for c in checks):
        raise SystemExit(1)


def _inference_example(coordinator: str) -> str:
    """A commented ``[inference]`` table for ``init``: encrypted inference stays off until the hospital opts in."""
    head, sep, port = coordinator.rpartition(":")
    endpoint = f"{head}:7778" if coordinator.startswith("tcp://") and sep and port.isdigit() else "tcp://host:7778"
    rows = [("[inference]", "encrypted inference as a data owner (medfl-agent infer --encrypted); uncomment to use"),
            ("allow_encrypted = true", "may this agent request it at all (default false)"),
            (f'endpoint = "{endpoint}"', "the model server; default: the coordinator's host, port 7778"),
            ('model_server_key_file = "keys/coordinator.key"', "pinned; default: coordinator.public_key_file"),
            ('trusted_dealers = ["keys/dealer.key"]', "dealer public keys: files (relative to this file) or Z85"),
            ('model = "cnn"', "the served model's architecture"),
            ("image_size = 64", "must match the served model"),
            ("timeout_s = 120", "give up on a silent session after this many seconds")]
    return "\n" + "".join(f"# {row:48s} # {note}\n" for row, note in rows)


def _load(args: argparse.Namespace):
    from agent.config import load_config

    args.config = AGENT.find(args.config)
    return load_config(args.config)


def _fingerprint(args: argparse.Namespace) -> None:
    from medfl.wire import fingerprint, read_keypair

    cfg = _load(args)
    if cfg.keys.secret_key_file is None:
        raise ConfigError([("keys.secret_key_file", "not set; run 'medfl-agent init'")], source=str(args.config))
    print(fingerprint(read_keypair(cfg.keys.secret_key_file).public))


def _check(args: argparse.Namespace) -> None:
    from agent.config import key_file_problems
    from medfl.data import DataSpec, load_splits

    cfg = _load(args)
    problems = key_file_problems(cfg)
    if problems:
        raise ConfigError(problems, source=str(args.config))
    if cfg.data.kind in ("brats", "msd"):
        from medfl.data.segmentation import load_segmentation_splits

        seg, cases = load_segmentation_splits(cfg.data.kind, cfg.data.path, patch=(32, 32, 32))
        print(cases.report())
        print(f"{cases.num_classes} classes (background included), channels: {', '.join(cases.channel_names)}")
        for name, ds in seg.items():
            print(f"{name}: {len(ds)} cases")
        print("configuration OK")
        return
    splits = load_splits(DataSpec(kind=cfg.data.kind, path=cfg.data.path, image_size=64))
    skipped = _skipped(cfg.data.kind, cfg.data.path)
    for name, ds in splits.items():
        labels = ds.tensors[1]
        print(f"{name}: {len(ds)} images, {int(labels.sum())} positive")
        for line in skipped.get(name, []):
            print(f"  {line}")
    for line in skipped.get(None, []):
        print(line)
    print("configuration OK")


def _skipped(kind: str, path: pathlib.Path) -> dict[str | None, list[str]]:
    """'skipped N <reason>: a, b' lines per split (None: beside the splits) of an image folder."""
    if kind != "folder":
        return {}
    from medfl.data.folder import REASONS, skipped_files

    groups: dict[tuple[str | None, str], list[str]] = {}
    for s in skipped_files(path):
        groups.setdefault((s.split, s.reason), []).append(s.path)
    out: dict[str | None, list[str]] = {}
    for (split, reason), paths in groups.items():
        shown = ", ".join(paths[:20]) + (f", ... and {len(paths) - 20} more" if len(paths) > 20 else "")
        out.setdefault(split, []).append(f"skipped {len(paths)} {REASONS[reason][len(paths) > 1]}: {shown}")
    return out


def _privacy(args: argparse.Namespace) -> None:
    from medfl.privacy.ledger import Ledger, dataset_key

    cfg = _load(args)
    pol = cfg.policy
    dataset = dataset_key(cfg.data.kind, cfg.data.path)
    ledger = Ledger(cfg.agent.state_dir / "privacy" / "ledger.sqlite")
    try:
        entries = ledger.entries(dataset=dataset)
        print(f"data set {dataset}: {len(entries)} released DP-SGD run(s)")
        for job in dict.fromkeys(e.job_id for e in entries):
            mine = [e for e in entries if e.job_id == job]
            last = mine[-1]
            eps = ledger.job_epsilon(dataset=dataset, job_id=job, delta=last.delta, accountant=last.accountant)
            print(f"  job {job}: {len(mine)} round(s), {sum(e.run.steps for e in mine)} steps, epsilon {eps:.3f} "
                  f"at delta {last.delta:g} ({last.accountant})")
        total = ledger.dataset_epsilon(dataset=dataset, delta=pol.total_delta)
        print(f"total: epsilon {total:.3f} at delta {pol.total_delta:g} (rdp) over all jobs")
        print(f"limits: max_epsilon_per_job={pol.max_epsilon_per_job}, max_total_epsilon={pol.max_total_epsilon}")
    finally:
        ledger.close()


def _serve(args: argparse.Namespace) -> None:
    from agent.service import AgentService
    from medfl.logs import setup_logging, stop_on_signals

    setup_logging("agent")
    cfg = _load(args)
    service = AgentService(cfg)
    pacs = None
    if cfg.pacs.enabled:
        from agent.pacs.service import PacsService

        pacs = PacsService(cfg)
        pacs.start()

    shutdown = stop_on_signals(service.stop)
    try:
        service.serve()
    finally:
        if pacs is not None:
            pacs.stop()
    shutdown.finish()


def _pacs_serve(args: argparse.Namespace) -> None:
    from agent.pacs.service import PacsService
    from medfl.logs import setup_logging, stop_on_signals

    setup_logging("agent-pacs")
    cfg = _load(args)
    service = PacsService(cfg)
    service.start()
    shutdown = stop_on_signals(service._stop.set)
    try:
        service.wait()
    finally:
        service.stop()
    shutdown.finish()


def _infer(args: argparse.Namespace) -> None:
    import json

    from agent.infer import run_agent_infer
    from medfl.inference import format_table

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise DataError(f"image(s) not found: {', '.join(missing)}; give PNG, JPEG or DICOM files")
    summary = run_agent_infer(_load(args), args.images)
    print(format_table(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
