"""``medfl``: the apps' command line - the demo federation, inference by checkpoint, version, models.

Argument parsing imports nothing heavy; each command imports its app (and torch) when it runs.
"""

from __future__ import annotations

import argparse
import pathlib

from medfl.exits import ExitCode, die, run_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medfl", description="medfl: federated learning for medical imaging")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run a coordinator and N hospital agents on loopback (CurveZMQ) and train")
    d.add_argument("--agents", type=int, default=3, help="number of hospitals (default 3)")
    d.add_argument("--rounds", type=int, default=None,
                   help="federated rounds (default 5; 12 with --task segmentation)")
    d.add_argument("--json", type=pathlib.Path, default=None, help="write the JSON summary here")
    d.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo-out"),
                   help="working folder (default ./demo-out; replaced if made by an earlier demo)")
    d.add_argument("--model", default="cnn", help="model from the registry (default cnn)")
    d.add_argument("--task", choices=("classification", "segmentation"), default="classification",
                   help="classification: chest X-rays and a CNN (default); segmentation: BraTS-like 4-sequence MR "
                        "volumes and a 3-D U-Net, Dice in the secure sum, a picture of the predicted masks")
    d.add_argument("--cases-per-agent", type=int, default=40,
                   help="segmentation: MR cases per hospital (default 40; each agent holds out 15%%)")
    d.add_argument("--train-per-agent", type=int, default=None,
                   help="training images per hospital (default 1080 with DP, 360 with --no-dp)")
    d.add_argument("--val-per-agent", type=int, default=120)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--plain", action="store_true",
                   help="plain FedAvg instead of secure aggregation (the coordinator then sees every update)")
    d.add_argument("--neighbours", type=int, default=0,
                   help="SecAgg+ neighbourhood size (default 0: every agent masks with every other, SecAgg)")
    d.add_argument("--no-dp", action="store_true", help="train without differential privacy (default: DP-SGD on, "
                   "except with --task segmentation)")
    d.add_argument("--dp", action="store_true",
                   help="train with DP in the segmentation demo too (3 x 34 synthetic volumes are too few for "
                   "DP-SGD to learn the sub-regions: Dice 0.00 after 12 rounds at epsilon 7.9, measured)")
    d.add_argument("--dp-level", choices=("sample", "client", "both"), default="sample",
                   help="sample: DP-SGD at every hospital (default); client: the distributed discrete Gaussian on "
                   "each hospital's whole update inside secure aggregation; both")
    d.add_argument("--client-noise-multiplier", type=float, default=1.0,
                   help="client-level DP: noise multiplier z (default 1.0)")
    d.add_argument("--noise-multiplier", type=float, default=None,
                   help="DP-SGD noise multiplier of the demo job (default 1.0)")
    d.add_argument("--encrypted-images", type=int, default=2,
                   help="validation images scored by encrypted inference at the end (default 2; 0 skips)")
    inf = sub.add_parser("infer", help="score images with a checkpoint, in the clear or by encrypted inference")
    inf.add_argument("images", nargs="+", type=pathlib.Path, metavar="IMAGE", help="PNG, JPEG or DICOM files")
    inf.add_argument("--checkpoint", type=pathlib.Path, required=True, help="safetensors model (e.g. the demo's)")
    inf.add_argument("--encrypted", action="store_true",
                     help="2PC + dealer: the model server never sees the image, this side never sees the weights")
    inf.add_argument("--compare-plain", action="store_true", help="also run the plain model and report the difference")
    inf.add_argument("--json", type=pathlib.Path, default=None, help="write the results here")
    inf.add_argument("--server", default=None, help="a remote model server's endpoint (default: start one locally)")
    inf.add_argument("--server-key", default=None, help="its public key (file or Z85), pinned")
    inf.add_argument("--key", type=pathlib.Path, default=None, help="this data owner's secret key file (remote)")
    inf.add_argument("--dealer-key", default=None, help="the dealer's public key to accept (remote; pinned)")
    inf.add_argument("--calibration-dir", type=pathlib.Path, default=None,
                     help="representative images for the local model server's range calibration")
    inf.add_argument("--timeout", type=float, default=120.0, help="abort when a party is silent this long (s)")
    sm = sub.add_parser("simulate", help="run a job over N virtual hospitals on Ray (the agents' and coordinator's "
                        "own code, messages passed as Ray objects)")
    sm.add_argument("job", type=pathlib.Path, help="the job file (as medfl-coordinator jobs submit takes it)")
    sm.add_argument("--sites", type=int, default=10, help="virtual hospitals (default 10)")
    sm.add_argument("--out", type=pathlib.Path, default=pathlib.Path("sim-out"),
                    help="working folder (default ./sim-out; replaced if made by an earlier simulation)")
    sm.add_argument("--json", type=pathlib.Path, default=None, help="write the JSON summary here")
    sm.add_argument("--partition", choices=("iid", "dirichlet", "quantity"), default="iid",
                    help="how the synthetic pool is split: iid, dirichlet (label skew) or quantity skew")
    sm.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skew)")
    sm.add_argument("--train-per-site", type=int, default=64, help="mean training images per site (default 64)")
    sm.add_argument("--val-per-site", type=int, default=32, help="mean validation images per site (default 32)")
    sm.add_argument("--site-data", type=pathlib.Path, nargs="+", default=None, metavar="PATH",
                    help="one existing data set per site (folder, .npz, BraTS or MSD) instead of the synthetic pool")
    sm.add_argument("--dropout", type=float, default=0.0, help="probability a site misses a whole round")
    sm.add_argument("--straggler", type=float, default=0.0, help="probability a site is late in a round")
    sm.add_argument("--delay", type=float, default=0.0,
                    help="how late a straggler is (s); later than the job's round_deadline_s: it drops mid-round")
    sm.add_argument("--fault-seed", type=int, default=0)
    sm.add_argument("--seed", type=int, default=0, help="seed of the synthetic pool and its split")
    sm.add_argument("--address", default=None, help="Ray cluster to join ('auto' after 'ray start'); default: "
                    "a local Ray")
    sm.add_argument("--workers", type=int, default=0,
                    help="Ray actors hosting the sites (default: the cluster's CPUs / --cpus-per-site)")
    sm.add_argument("--cpus-per-site", type=float, default=1.0, help="CPUs each actor declares (default 1)")
    sm.add_argument("--gpus-per-site", type=float, default=0.0,
                    help="GPU share each actor declares, e.g. 0.1 (sites then train on cuda)")
    sm.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("version", help="print the version")
    sub.add_parser("models", help="list the models in the registry")
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``medfl``."""
    run_command(_dispatch, _parser().parse_args(argv))


def _dispatch(args: argparse.Namespace) -> None:
    if args.cmd == "version":
        from medfl import __version__

        print(__version__)
    elif args.cmd == "models":
        from medfl.models import list_models

        print("\n".join(list_models()))
    elif args.cmd == "demo":
        _demo(args)
    elif args.cmd == "infer":
        _infer(args)
    elif args.cmd == "simulate":
        _simulate(args)


def _simulate(args: argparse.Namespace) -> None:
    try:
        import ray  # noqa: F401 - the optional extra
    except ImportError:
        die(ExitCode.USAGE, "medfl simulate needs Ray: pip install 'medfl[sim]' (or pip install ray)")
    from apps.simulate import SimOptions, run_simulation

    if not args.job.is_file():
        die(ExitCode.USAGE, f"job file {args.job} not found")
    opts = SimOptions(job=args.job, sites=args.sites, out=args.out, scheme=args.partition, alpha=args.alpha,
                      train_per_site=args.train_per_site, val_per_site=args.val_per_site, site_data=args.site_data,
                      dropout=args.dropout, straggler=args.straggler, delay_s=args.delay, fault_seed=args.fault_seed,
                      address=args.address, workers=args.workers, cpus_per_site=args.cpus_per_site,
                      gpus_per_site=args.gpus_per_site, seed=args.seed, progress=not args.no_progress,
                      json_path=args.json)
    try:
        summary = run_simulation(opts)
    except (ValueError, FileExistsError) as exc:
        die(ExitCode.USAGE, str(exc))
    except KeyboardInterrupt:
        die(ExitCode.INTERRUPTED)
    print(f"{'round':>5} {'agents':>6} {'val_auc':>8} {'val_acc':>8} {'epsilon':>8} {'client_eps':>10} {'seconds':>8}")
    for r in summary["rounds"]:
        def f(v: float | None, w: int) -> str:
            return f"{v:>{w}.4f}" if v is not None else f"{'n/a':>{w}}"
        print(f"{r['round']:>5} {r['agents']:>6} {f(r['val_auc'], 8)} {f(r['val_accuracy'], 8)} "
              f"{f(r['epsilon'], 8)} {f(r['client_epsilon'], 10)} {r['seconds']:>8.1f}")
    print(f"\njob {summary['job_id']}: {summary['status']} over {summary['sites']} virtual sites on "
          f"{len(summary['nodes'])} Ray node(s), {summary['workers']} actor(s); {summary['rounds_per_minute']} "
          f"rounds/min; peak RSS {max(summary['peak_rss_mb']['actors'], default=0):.0f} MB per actor")
    print(f"summary: {summary['json']}")
    if summary["status"] != "done":
        die(ExitCode.JOB_FAILED, f"simulation ended {summary['status']}: {summary['message']}")


def _infer(args: argparse.Namespace) -> None:
    import json

    from apps.infer import InferOptions, run_infer
    from medfl.errors import DataError, MedflError, SessionAborted, StateError
    from medfl.inference import format_table
    from medfl.logs import setup_logging

    setup_logging("medfl-infer", level="WARNING")
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        die(ExitCode.USAGE, f"image(s) not found: {', '.join(missing)}")
    if not args.checkpoint.is_file():
        die(ExitCode.USAGE, f"checkpoint {args.checkpoint} not found; give a .safetensors model (the demo writes "
                            "one under demo-out/coordinator/state/checkpoints/)")
    opts = InferOptions(checkpoint=args.checkpoint, images=tuple(args.images), encrypted=args.encrypted,
                        compare_plain=args.compare_plain, server=args.server, server_key=args.server_key,
                        key=args.key, dealer_key=args.dealer_key, calibration_dir=args.calibration_dir,
                        timeout_s=args.timeout)
    try:
        summary = run_infer(opts)
    except SessionAborted as exc:
        die(ExitCode.SESSION_ABORTED, f"session aborted ({exc.code}): {exc}")
    except (StateError, DataError) as exc:
        die(ExitCode.STATE if isinstance(exc, StateError) else ExitCode.DATA, str(exc))
    except MedflError as exc:
        die(ExitCode.FAILURE if not isinstance(exc, PermissionError) else ExitCode.AUTH, str(exc))
    except KeyboardInterrupt:
        die(ExitCode.INTERRUPTED)
    print(format_table(summary))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"results: {args.json}")


def _demo(args: argparse.Namespace) -> None:
    from apps.demo import DemoOptions, format_table, run_demo

    if args.dp and args.no_dp:
        die(ExitCode.USAGE, "--dp and --no-dp contradict each other; give one")
    dp = args.dp or (not args.no_dp and args.task != "segmentation")
    if args.rounds is None:
        args.rounds = 12 if args.task == "segmentation" else 5
    if args.agents < 1 or args.rounds < 1:
        die(ExitCode.USAGE, f"--agents and --rounds must be at least 1, got {args.agents} and {args.rounds}")
    opts = DemoOptions(agents=args.agents, rounds=args.rounds, out=args.out, json_path=args.json, model=args.model,
                       train_per_agent=args.train_per_agent, val_per_agent=args.val_per_agent,
                       image_size=args.image_size, seed=args.seed, progress=not args.no_progress,
                       secure=not args.plain, neighbours=args.neighbours, dp=dp,
                       encrypted_images=args.encrypted_images, task=args.task,
                       cases_per_agent=args.cases_per_agent, dp_level=args.dp_level,
                       client_noise_multiplier=args.client_noise_multiplier,
                       **({"noise_multiplier": args.noise_multiplier} if args.noise_multiplier is not None else {}))
    try:
        summary = run_demo(opts)
    except (RuntimeError, TimeoutError, FileExistsError) as exc:
        die(ExitCode.JOB_FAILED, str(exc))
    except KeyboardInterrupt:
        die(ExitCode.INTERRUPTED)
    print()
    print(format_table(summary))
    print()
    if summary["task"] == "segmentation":
        dice = summary["final_val_dice"]
        print(f"job {summary['job_id']}: {summary['status']} in {summary['wall_seconds']:.0f} s over "
              f"{summary['transport']} with {summary['aggregation']} aggregation; final validation Dice "
              + (f"{dice:.4f} (mean of the tumour sub-regions)" if dice is not None else "n/a"))
        if "masks" in summary:
            print(f"predicted vs true masks: {summary['masks']['path']}")
    else:
        auc = summary["final_val_auc"]
        print(f"job {summary['job_id']}: {summary['status']} in {summary['wall_seconds']:.0f} s over "
              f"{summary['transport']} with {summary['aggregation']} aggregation; final validation AUC {auc:.4f}"
              if auc is not None else "no AUC")
    p = summary["privacy"]
    if p["enabled"] and p["level"] != "client":
        print(f"differential privacy: DP-SGD at every hospital, noise multiplier {p['noise_multiplier']}, clip "
              f"{p['max_grad_norm']}; epsilon {summary['final_epsilon']:.3f} at delta {summary['delta']:g} "
              "after the last round (largest over the hospitals)" if summary["final_epsilon"] is not None else
              "differential privacy: on, but no epsilon was reported")
    if p["enabled"] and p["level"] != "sample":
        ce = summary.get("final_client_epsilon")
        print(f"client-level DP: distributed discrete Gaussian inside secure aggregation, noise multiplier "
              f"{p['client_noise_multiplier']}; the federation's client-level epsilon "
              + (f"{ce:.3f} at delta {summary['delta']:g} after the last round" if ce is not None else "n/a"))
    if not p["enabled"]:
        print("differential privacy: OFF (" + ("--no-dp" if args.no_dp else "the segmentation demo's default; "
                                               "--dp turns DP-SGD on") + ")")
    print(f"curves: {summary['plot']}")
    print(f"summary: {summary['json']}")
    print(f"final global model: {summary['checkpoint']}")
    enc = summary.get("encrypted_inference")
    if enc and "error" not in enc:
        print(f"encrypted inference of {enc['images']} validation image(s): max |logit diff| "
              f"{enc['max_abs_diff']:.2e}, decisions {'agree' if enc['decisions_agree'] else 'DIFFER'}, "
              f"{enc['seconds_per_image']:.1f} s per image end to end ({enc['online_seconds_per_image']:.1f} s "
              f"online), {enc['bytes_per_image'] / 1e6:.1f} MB online per image")
    elif enc:
        print(f"encrypted inference failed: {enc['error']}")
    if summary["status"] != "done":
        die(ExitCode.JOB_FAILED, f"job ended {summary['status']}: {summary['message']}")


if __name__ == "__main__":
    main()
