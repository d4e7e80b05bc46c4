"""A federated round's local work at the agent: train or validate in a worker thread, hand back the result.

Training and validation run in a worker thread so the socket loop (:mod:`agent.service`) keeps
heart-beating; each result goes on :attr:`RoundWorker.results` with the key of its round (job,
round, kind), and the loop drops a result whose round was superseded. A plain round's result is
the reply to send (UPDATE, METRICS, or an ERROR); a secure round's is the local vector laid out
as :mod:`medfl.secagg.vector` says, masked by :class:`~agent.secure.SecureRound` before it leaves.

Differential privacy: a job with DP enabled trains with DP-SGD. Before each round the worker
plans the round's DP-SGD and checks the job's and the dataset's budget against agent.toml
(:mod:`agent.budget`); a round that would overspend is refused with JOB_REFUSE and the reason.
A trained round is written to the privacy ledger (state_dir/privacy/ledger.sqlite) before its
update is sent, and the update (in a secure round: the clear report beside the masked input)
carries the job's epsilon and delta at this agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.budget import Budget
from agent.config import AgentConfig
from agent.secure import SecureRound
from medfl.errors import PolicyViolation
from medfl.jobspec import JobSpec
from medfl.privacy.accountant import SgdRun
from medfl.wire import Envelope, MessageType

__all__ = ["RoundResult", "RoundWorker"]

log = logging.getLogger(__name__)

#: (job, round, kind) of a round's work; kind is "train#<attempt>" or "evaluate"
RoundKey = tuple[str, int, str]


@dataclass(frozen=True)
class RoundResult:
    """What a worker hands back to the socket loop.

    Parameters
    ----------
    key : tuple of (str, int, str)
        The round's (job, round, kind).
    env : Envelope, optional
        A plain reply (or an error).
    vector : ndarray, optional
        A secure round's local vector, masked before it leaves.
    report : dict, optional
        Public facts sent beside the masked vector (epsilon, delta).
    """

    key: RoundKey
    env: Envelope | None = None
    vector: np.ndarray | None = None
    report: dict[str, Any] | None = None


class RoundWorker:
    """Train and validate rounds in worker threads; the results go to :attr:`results`.

    Parameters
    ----------
    cfg : AgentConfig
        Parsed agent.toml (data set, privacy policy, state folder).
    """

    def __init__(self, cfg: AgentConfig, *, gate: threading.Semaphore | None = None):
        self.cfg = cfg
        #: taken around each training and validation: a simulation host shares one among its sites so
        #: they train one (or a few) at a time, as its CPU share allows; a daemon has none
        self._gate: Any = gate if gate is not None else contextlib.nullcontext()
        self._splits_cache: dict[int, dict[str, Any]] = {}
        self._seg_cache: dict[tuple[int, ...], dict[str, Any]] = {}
        # validate the data set at start-up: fail early and clearly
        if self.segmentation_data:
            self.seg_splits((32, 32, 32))
        else:
            self.splits(64)
        from medfl.privacy.ledger import Ledger, dataset_key

        self.ledger = Ledger(cfg.agent.state_dir / "privacy" / "ledger.sqlite")
        self.budget = Budget(ledger=self.ledger, dataset=dataset_key(cfg.data.kind, cfg.data.path), policy=cfg.policy)
        self._budget_lock = threading.Lock()  # check -> train -> record of one round at a time
        #: finished work, in the order it finished
        self.results: queue.Queue[RoundResult] = queue.Queue()

    def splits(self, image_size: int) -> dict[str, Any]:
        """The data set's splits at ``image_size`` (loaded once per size).

        Parameters
        ----------
        image_size : int
            Side of the square images the job's model takes.
        """
        from medfl.data import DataSpec, load_splits

        if image_size not in self._splits_cache:
            kind = self.cfg.data.kind
            if kind not in ("folder", "npz"):
                raise ValueError(f"data kind {kind!r} holds segmentation cases, not classified images")
            spec = DataSpec(kind=kind, path=self.cfg.data.path, image_size=image_size)
            self._splits_cache[image_size] = load_splits(spec)
        return self._splits_cache[image_size]

    @property
    def segmentation_data(self) -> bool:
        """Whether this hospital's data set is a segmentation one (BraTS or MSD cases)."""
        from medfl.data.segmentation import SEGMENTATION_KINDS

        return self.cfg.data.kind in SEGMENTATION_KINDS

    def seg_splits(self, patch: tuple[int, ...]) -> dict[str, Any]:
        """The segmentation cases' splits at ``patch`` (read once per patch; left-out cases logged)."""
        from medfl.data.segmentation import load_segmentation_splits

        if patch not in self._seg_cache:
            splits, cases = load_segmentation_splits(self.cfg.data.kind, self.cfg.data.path, patch=patch)
            if cases.skipped:
                log.warning("data set %s: %s", self.cfg.data.path, cases.report())
            self._seg_cache[patch] = {**splits, "num_classes": cases.num_classes, "channels": cases.channel_names}
        return self._seg_cache[patch]

    def job_data(self, spec: JobSpec) -> dict[str, Any]:
        """The train and val splits for a job, in the form its model takes.

        Raises
        ------
        ValueError
            The job's task does not match this hospital's data, or a segmentation model's input
            channels or classes differ from the data's (the message names both).
        """
        task = spec.job.task
        if task != "segmentation":
            if self.segmentation_data:
                raise ValueError(f"this hospital's data set is {self.cfg.data.kind!r} segmentation cases; "
                                 f"job {spec.job.name!r} is a {task} job")
            return self.splits(spec.job.image_size)
        if not self.segmentation_data:
            raise ValueError(f"job {spec.job.name!r} is a segmentation job but this hospital's data set is "
                             f"{self.cfg.data.kind!r} (classification); point [data] at BraTS or MSD cases")
        from medfl.models import model_defaults

        data = self.seg_splits(spec.patch)
        defaults = model_defaults(spec.job.model)
        in_channels = int(spec.job.model_args.get("in_channels", defaults.get("in_channels", 1)))
        channels = data["channels"]
        if in_channels != len(channels):
            raise ValueError(f"the job's model {spec.job.model} takes {in_channels} input channel(s); this "
                             f"hospital's cases have {len(channels)} ({', '.join(channels)})")
        if spec.num_classes != data["num_classes"]:
            raise ValueError(f"the job's model outputs {spec.num_classes} classes; this hospital's labels have "
                             f"{data['num_classes']} (background included)")
        if int(defaults.get("spatial_dims", 3 if spec.job.model.endswith("3d") else 2)) == 2:
            return {k: _slices(data[k]) for k in ("train", "val")}
        return data

    def close(self) -> None:
        """Close the privacy ledger."""
        self.ledger.close()

    def start_train(self, key: RoundKey, spec: JobSpec, env: Envelope, secure: SecureRound | None) -> None:
        """Train the round of a TRAIN message in a worker thread.

        Parameters
        ----------
        key : tuple of (str, int, str)
            The round's key (its result carries it).
        spec : JobSpec
            The accepted job.
        env : Envelope
            The TRAIN message.
        secure : SecureRound or None
            The round's open secure sum; None for a plain round.
        """
        threading.Thread(target=self._train_worker, args=(key, spec, env, secure), daemon=True,
                         name=f"train-{env.round}").start()

    def start_evaluate(self, key: RoundKey, spec: JobSpec, env: Envelope, secure: SecureRound | None) -> None:
        """Validate the new global model of an EVALUATE message in a worker thread (as :meth:`start_train`)."""
        threading.Thread(target=self._evaluate_worker, args=(key, spec, env, secure), daemon=True,
                         name=f"eval-{env.round}").start()

    # ---- workers -----------------------------------------------------------------------
    @staticmethod
    def _model(spec: JobSpec, arrays: dict[str, Any]):
        from medfl.models import create_model
        from medfl.models.weights import load_state_arrays

        model = create_model(spec.job.model, **spec.job.model_args)
        load_state_arrays(model, arrays)
        return model

    def _train_worker(self, key: RoundKey, spec: JobSpec, env: Envelope,
                      secure: SecureRound | None = None) -> None:
        try:
            with self._gate, self._budget_lock:
                res = self._train(key, spec, env, secure)
        except Exception as exc:  # a training failure is reported, never kills the daemon
            log.exception("training failed for job %s round %s", env.job, env.round)
            res = RoundResult(key, Envelope(type=MessageType.ERROR, job=env.job, round=env.round,
                                        body={"code": "training_failed", "message": str(exc)[:500],
                                              "in_reply_to": env.seq}))
        self.results.put(res)

    def _train(self, key: RoundKey, spec: JobSpec, env: Envelope,
               secure: SecureRound | None) -> RoundResult:
        import torch

        from agent.trainer import train_local
        from medfl.models.weights import state_arrays
        job_id, rnd, b = str(env.job), int(env.round or 0), env.body
        attempt = int(b.get("attempt", 1))
        train = self.job_data(spec)["train"]
        plan = None
        prior: tuple[SgdRun, ...] = ()
        if spec.privacy.sample_level:
            plan = self.budget.plan(spec, n_train=len(train))
            try:
                job_eps, total_eps = self.budget.check(job_id, spec, plan, round=rnd)
            except PolicyViolation as exc:
                log.warning("refusing job %s round %d: %s", job_id, rnd, exc)
                return RoundResult(key, Envelope(type=MessageType.JOB_REFUSE, job=env.job, round=env.round,
                                             body={"reason": str(exc), "budget": True}))
            log.info("job %s round %d: DP-SGD q=%.4f sigma=%.4f C=%g, %d steps; epsilon after it %.3f (job), "
                     "%.3f (dataset)", job_id, rnd, plan.sample_rate, plan.noise_multiplier, plan.max_grad_norm,
                     plan.steps, job_eps, total_eps)
            prior = tuple(self.ledger.runs(dataset=self.budget.dataset, job_id=job_id))
        # the frames are read-only views of the message: one writable copy serves both uses
        global_arrays = {k: v.copy() for k, v in env.tensors.items()}
        model = self._model(spec, global_arrays)
        started = time.monotonic()
        seed = spec.job.seed * 100_003 + rnd * 101 + attempt
        with torch.random.fork_rng(devices=[]):
            # dropout masks: reproducible from the job seed, round and attempt (not a secret;
            # DP noise comes from medfl.csprng)
            torch.manual_seed(seed)
            result = train_local(
                model, train, epochs=int(b["local_epochs"]), batch_size=int(b["batch_size"]), lr=float(b["lr"]),
                momentum=float(b["momentum"]), weight_decay=float(b["weight_decay"]),
                fedprox_mu=float(b.get("fedprox_mu", 0.0)), optimizer=str(b.get("optimizer", "sgd")),
                global_arrays=global_arrays, seed=seed, dp=plan, dp_prior=prior, task=spec.job.task,
                device=self.cfg.training.device)
        body: dict[str, Any] = {"num_samples": result.num_samples, "train_loss": result.mean_loss,
                                "seconds": time.monotonic() - started}
        report: dict[str, Any] = {}
        if plan is not None:
            # on disk before the update leaves: a crash may over-count, never under-count
            report = {"epsilon": self.budget.record(job_id, plan, round=rnd, attempt=attempt), "delta": plan.delta}
            body.update(report, dp=plan.to_dict())
        log.info("job %s round %s: trained on %d samples, loss %.4f%s", env.job, env.round, result.num_samples,
                 result.mean_loss, f", epsilon {body['epsilon']:.3f}" if plan is not None else "")
        if secure is not None and secure.client_dp is not None:
            from medfl.privacy.distributed_dp import encode_update
            from medfl.secagg.vector import pack_delta

            delta, norm = pack_delta(global_arrays, state_arrays(model))
            # clipped, rounded and noised here: the coordinator never sees a noise-free value
            ring = encode_update(delta, secure.client_dp, ring_bits=secure.spec.ring_bits)
            log.info("job %s round %s: client-level DP: update norm %.3g (clip %g), discrete Gaussian sigma %.4g "
                     "in a %d-bit ring", env.job, env.round, norm, secure.client_dp.clip, secure.client_dp.sigma,
                     secure.spec.ring_bits)
            return RoundResult(key, vector=ring, report=report)
        if secure is not None:
            from medfl.buffers import default_pool
            from medfl.secagg.vector import fit_length, pack_fit

            vector, norm = pack_fit(global_arrays, state_arrays(model), num_samples=result.num_samples,
                                    train_loss=result.mean_loss, clip_norm=secure.clip_norm,
                                    sample_cap=secure.sample_cap,
                                    out=default_pool().empty(fit_length(global_arrays), np.float32))
            if norm > secure.clip_norm:
                log.info("job %s round %s: update norm %.3g clipped to %g", env.job, env.round, norm,
                         secure.clip_norm)
            # the privacy report (epsilon, delta) is public and rides in the clear beside the masked vector
            return RoundResult(key, vector=vector, report=report)
        return RoundResult(key, Envelope(type=MessageType.UPDATE, job=env.job, round=env.round, body=body,
                                     tensors=state_arrays(model)))

    def _keep_model(self, spec: JobSpec, env: Envelope) -> None:
        """Save the new global model of a round; the PACS scorer uses the newest one."""
        from medfl.models.weights import save_checkpoint

        path = self.cfg.agent.state_dir / "models" / str(env.job) / f"round-{int(env.round or 0):04d}.safetensors"
        save_checkpoint(path, {k: v.copy() for k, v in env.tensors.items()},
                        {"job_id": str(env.job), "round": str(env.round), "model": spec.job.model,
                         "model_args": json.dumps(spec.job.model_args, sort_keys=True),
                         "image_size": str(spec.job.image_size)})

    def _evaluate_worker(self, key: RoundKey, spec: JobSpec, env: Envelope,
                         secure: SecureRound | None = None) -> None:
        from agent.trainer import evaluate, evaluate_segmentation
        from medfl.secagg.vector import metric_names

        with self._gate:  # a simulation host's share of its CPUs (none in the daemon)
            try:
                model = self._model(spec, {k: v.copy() for k, v in env.tensors.items()})
                val = self.job_data(spec)["val"]
                if spec.job.task == "segmentation":
                    m = evaluate_segmentation(model, val, num_classes=spec.num_classes, device=self.cfg.training.device)
                    names = metric_names("segmentation", spec.num_classes)
                    shown = f"val dice {m['dice']:.4f} loss {m['loss']:.4f}"
                else:
                    m = evaluate(model, val, device=self.cfg.training.device)
                    names = metric_names()
                    shown = f"val auc {m['auc']:.4f} acc {m['accuracy']:.4f}"
                self._keep_model(spec, env)
                if secure is not None:
                    from medfl.secagg.vector import pack_metrics

                    log.info("job %s round %s: %s (sent masked)", env.job, env.round, shown)
                    self.results.put(RoundResult(key, vector=pack_metrics(m, clip_norm=secure.clip_norm,
                                                                       sample_cap=secure.sample_cap, names=names)))
                    return
                out = Envelope(type=MessageType.METRICS, job=env.job, round=env.round,
                               body={k: float(m[k]) for k in ("n", *names)})
                log.info("job %s round %s: %s", env.job, env.round, shown)
            except Exception as exc:
                log.exception("validation failed for job %s round %s", env.job, env.round)
                out = Envelope(type=MessageType.ERROR, job=env.job, round=env.round,
                               body={"code": "evaluation_failed", "message": str(exc)[:500], "in_reply_to": env.seq})
            self.results.put(RoundResult(key, out))


def _slices(data: Any) -> Any:
    """Volumes (N, C, D, H, W) with maps (N, D, H, W) as the N*D axial slices a 2-D model takes."""
    from torch.utils.data import TensorDataset

    x, y = data.tensors
    n, c, d = x.shape[:3]
    return TensorDataset(x.transpose(1, 2).reshape(n * d, c, *x.shape[3:]), y.reshape(n * d, *y.shape[2:]))
