"""The hospital agent daemon: connects out to the coordinator, trains and validates locally.

The agent only ever connects out (a ZeroMQ DEALER; hospital firewalls allow outbound only),
pins the coordinator's CURVE public key, says HELLO until it is welcomed, heart-beats, and
re-introduces itself when the coordinator reports it as unknown (the coordinator restarted).
ZeroMQ reconnects by itself with exponential backoff. Every job offer and every round passes
the local policy first. Training and validation run in a worker thread so the socket loop
keeps heart-beating; results from a superseded round are dropped.

In a secure round (TRAIN / EVALUATE carry ``secure``) the agent never sends its weights or
metrics: :class:`~agent.secure.SecureRound` exchanges keys while the worker trains, then masks
the weighted delta (or the weighted metrics) laid out as :mod:`medfl.secagg.vector` says.

Differential privacy: a job with DP enabled trains with DP-SGD. Before each round the worker
plans the round's DP-SGD and checks the job's and the dataset's budget against agent.toml
(:mod:`agent.budget`); a round that would overspend is refused with JOB_REFUSE and the reason.
A trained round is written to the privacy ledger (state_dir/privacy/ledger.sqlite) before its
update is sent, and the update (in a secure round: the clear report beside the masked input)
carries the job's epsilon and delta at this agent.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import policy
from agent.budget import Budget
from agent.config import AgentConfig
from agent.secure import SecureRound
from medfl import __version__, envvars
from medfl.errors import ConfigError, MedflError, PolicyViolation
from medfl.jobspec import JobSpec, job_from_dict
from medfl.privacy.accountant import SgdRun
from medfl.secagg.envelopes import SECAGG_TO_AGENT
from medfl.wire import ClientChannel, Envelope, MessageType, SocketLimits, read_keypair, read_public_key

__all__ = ["AgentService"]

log = logging.getLogger(__name__)

HELLO_RETRY_S = 2.0
HEARTBEAT_S = 2.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class _Result:
    key: tuple[str, int, str]           # (job, round, kind)
    env: Envelope | None = None         # a plain reply (or an error)
    vector: np.ndarray | None = None    # a secure round's local vector, masked before it leaves
    report: dict[str, Any] | None = None  # public facts sent beside the masked vector (epsilon, delta)


class AgentService:
    """The agent daemon.

    Parameters
    ----------
    cfg : AgentConfig
        Parsed agent.toml.
    """

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        threads = int(envvars.get("MEDFL_TORCH_THREADS", str(cfg.training.torch_threads)) or 0)
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self._splits_cache: dict[int, dict[str, Any]] = {}
        self.splits = self._splits(64)  # validate the data set at start-up: fail early and clearly
        from medfl.privacy.ledger import Ledger, dataset_key

        self.ledger = Ledger(cfg.agent.state_dir / "privacy" / "ledger.sqlite")
        self.budget = Budget(ledger=self.ledger, dataset=dataset_key(cfg.data.kind, cfg.data.path), policy=cfg.policy)
        self._budget_lock = threading.Lock()  # check -> train -> record of one round at a time
        if cfg.transport.curve:
            if cfg.keys.secret_key_file is None or cfg.coordinator.public_key_file is None:
                raise ConfigError([("keys", "transport.curve = true needs keys.secret_key_file and "
                                    "coordinator.public_key_file")])
            keys = read_keypair(cfg.keys.secret_key_file)
            server_key = read_public_key(cfg.coordinator.public_key_file)
        else:
            log.warning("transport.curve = false: traffic is NOT encrypted or authenticated (tests only)")
            keys, server_key = None, None
        limits = SocketLimits(max_message_bytes=cfg.transport.max_message_mb * 2**20)
        self.channel = ClientChannel(connect=cfg.coordinator.endpoint, keys=keys, server_public_key=server_key,
                                     limits=limits)
        self.jobs: dict[str, JobSpec] = {}
        self.welcomed = False
        self._last_hello = -math.inf
        self._last_send = -math.inf
        self._results: queue.Queue[_Result] = queue.Queue()
        self._current: tuple[str, int, str] | None = None
        self._secure: dict[str, SecureRound] = {}  # phase -> the open secure sum
        self._stop = threading.Event()
        self._backoff = 1.0
        self._retry_at = 0.0

    def _splits(self, image_size: int) -> dict[str, Any]:
        from medfl.data import DataSpec, load_splits

        if image_size not in self._splits_cache:
            spec = DataSpec(kind=self.cfg.data.kind, path=self.cfg.data.path, image_size=image_size)
            self._splits_cache[image_size] = load_splits(spec)
        return self._splits_cache[image_size]

    # ---- loop --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return (thread-safe)."""
        self._stop.set()

    def serve(self) -> None:
        """Run until :meth:`stop` is called."""
        log.info("agent %s connecting to %s", self.cfg.agent.name, self.cfg.coordinator.endpoint)
        try:
            while not self._stop.is_set():
                env = self.channel.recv(timeout_ms=100)
                if env is not None:
                    try:
                        self._handle(env)
                    except MedflError as exc:
                        log.warning("could not handle %s: %s", env.type, exc)
                self._flush_results()
                self._keepalive()
        finally:
            try:
                if self.welcomed:
                    self._send(Envelope(type=MessageType.BYE))
            finally:
                self.channel.close()
                self.ledger.close()

    def _send(self, env: Envelope) -> None:
        self.channel.send(env)
        self._last_send = time.monotonic()

    def _keepalive(self) -> None:
        now = time.monotonic()
        if self.channel.auth_failed and now >= self._retry_at:
            # libzmq does not retry a connection whose key was refused: reconnect ourselves, with backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            self._retry_at = now + self._backoff
            log.info("reconnecting to %s (next try in %.0f s)", self.cfg.coordinator.endpoint, self._backoff)
            self.channel.reconnect()
            self.welcomed = False
            self._hello()
        elif not self.welcomed and now - self._last_hello > HELLO_RETRY_S:
            self._hello()
        elif self.welcomed and now - self._last_send > HEARTBEAT_S:
            self._send(Envelope(type=MessageType.HEARTBEAT))

    def _hello(self) -> None:
        splits = self.splits
        self._send(Envelope(type=MessageType.HELLO, body={
            "name": self.cfg.agent.name, "version": __version__,
            "models": list(self.cfg.policy.allowed_models), "min_parties": self.cfg.policy.min_parties,
            "train_samples": len(splits["train"]), "val_samples": len(splits["val"])}))
        self._last_hello = time.monotonic()

    def _flush_results(self) -> None:
        while True:
            try:
                res = self._results.get_nowait()
            except queue.Empty:
                return
            if res.key != self._current:
                log.info("dropping stale %s result for job %s round %d", res.key[2], res.key[0], res.key[1])
                continue
            self._current = None
            if res.env is not None:
                self._send(res.env)
            if res.vector is not None:
                run = self._secure.get("fit" if res.key[2].startswith("train") else "evaluate")
                if run is None:
                    log.warning("no secure sum open for the %s result of round %d; dropped", res.key[2], res.key[1])
                    continue
                try:
                    for env in run.set_vector(res.vector, report=res.report):
                        self._send(env)
                except MedflError as exc:
                    log.warning("secure %s of round %d failed: %s", run.session.phase, res.key[1], exc)

    # ---- messages ----------------------------------------------------------------------
    def _handle(self, env: Envelope) -> None:
        mtype = env.type
        if mtype == MessageType.WELCOME:
            if not self.welcomed:
                log.info("welcomed by coordinator %s", env.body.get("coordinator"))
            self.welcomed = True
            self._backoff = 1.0
        elif mtype == MessageType.ERROR:
            code = env.body.get("code")
            log.warning("coordinator error %s: %s", code, env.body.get("message"))
            if code == "unknown_peer":
                self.welcomed = False
                self._hello()
        elif mtype == MessageType.JOB_OFFER:
            self._on_offer(env)
        elif mtype == MessageType.TRAIN:
            self._on_train(env)
        elif mtype == MessageType.EVALUATE:
            self._on_evaluate(env)
        elif mtype in SECAGG_TO_AGENT:
            self._on_secagg(env)
        else:
            log.warning("ignoring unexpected %s from the coordinator", mtype)

    def _refuse(self, env: Envelope, reason: str) -> None:
        log.warning("refusing job %s: %s", env.job, reason)
        self._send(Envelope(type=MessageType.JOB_REFUSE, job=env.job, round=env.round, body={"reason": reason}))

    def _on_offer(self, env: Envelope) -> None:
        try:
            spec = job_from_dict(dict(env.body), source="JOB_OFFER")
            policy.check_job(self.cfg.policy, spec)
            self._splits(spec.job.image_size)
        except (ConfigError, PolicyViolation) as exc:
            self._refuse(env, str(exc))
            return
        self.jobs[str(env.job)] = spec
        log.info("accepted job %s (%s, model %s, %d rounds)", env.job, spec.job.name, spec.job.model,
                 spec.job.rounds)
        self._send(Envelope(type=MessageType.JOB_ACCEPT, job=env.job))

    def _on_train(self, env: Envelope) -> None:
        spec = self.jobs.get(str(env.job))
        if spec is None:
            self._refuse(env, f"job {env.job} was never offered to or accepted by this agent")
            return
        try:
            policy.check_round(self.cfg.policy, int(env.body.get("participants", 0)))
            run = self._open_secure(spec, env)
        except (PolicyViolation, MedflError) as exc:
            self._refuse(env, str(exc))
            return
        key = (str(env.job), int(env.round or 0), f"train#{env.body.get('attempt', 1)}")
        self._current = key
        threading.Thread(target=self._train_worker, args=(key, spec, env, run), daemon=True,
                         name=f"train-{env.round}").start()

    def _open_secure(self, spec: JobSpec, env: Envelope) -> SecureRound | None:
        """Start the secure sum a TRAIN / EVALUATE asks for (keys go out now); None for a plain round."""
        params = env.body.get("secure")
        if params is None:
            if spec.aggregation.secure or self.cfg.policy.require_secure_aggregation:
                raise PolicyViolation(
                    f"{env.type} of round {env.round} carries no secure-aggregation parameters, but "
                    + ("the job asks for secure aggregation" if spec.aggregation.secure else
                       "agent.toml policy.require_secure_aggregation = true")
                    + "; this agent will not send its update in the clear")
            return None
        run = SecureRound(job=str(env.job), round=int(env.round or 0), params=params, policy=self.cfg.policy)
        if env.type == MessageType.TRAIN:
            self._secure.clear()  # a new round (or attempt) supersedes every open secure sum
        self._secure[run.session.phase] = run
        self._send(run.start())
        return run

    def _on_secagg(self, env: Envelope) -> None:
        phase = env.body.get("phase")
        run = self._secure.get(phase) if isinstance(phase, str) else None
        if run is None:
            log.warning("ignoring %s for job %s round %s: no secure sum open for phase %r", env.type, env.job,
                        env.round, phase)
            return
        try:
            replies = run.on_message(env)
        except PolicyViolation as exc:
            log.warning("secure %s of round %s: %s", run.session.phase, env.round, exc)
            self._refuse(env, str(exc))
            return
        for reply in replies:
            self._send(reply)

    def _on_evaluate(self, env: Envelope) -> None:
        spec = self.jobs.get(str(env.job))
        if spec is None:
            log.warning("EVALUATE for unknown job %s ignored", env.job)
            return
        try:
            run = self._open_secure(spec, env)
        except (PolicyViolation, MedflError) as exc:
            self._refuse(env, str(exc))
            return
        key = (str(env.job), int(env.round or 0), "evaluate")
        self._current = key
        threading.Thread(target=self._evaluate_worker, args=(key, spec, env, run), daemon=True,
                         name=f"eval-{env.round}").start()

    # ---- workers -----------------------------------------------------------------------
    @staticmethod
    def _model(spec: JobSpec, arrays: dict[str, Any]):
        from medfl.models import create_model
        from medfl.models.weights import load_state_arrays

        model = create_model(spec.job.model, **spec.job.model_args)
        load_state_arrays(model, arrays)
        return model

    def _train_worker(self, key: tuple[str, int, str], spec: JobSpec, env: Envelope,
                      secure: SecureRound | None = None) -> None:
        try:
            with self._budget_lock:
                res = self._train(key, spec, env, secure)
        except Exception as exc:  # a training failure is reported, never kills the daemon
            log.exception("training failed for job %s round %s", env.job, env.round)
            res = _Result(key, Envelope(type=MessageType.ERROR, job=env.job, round=env.round,
                                        body={"code": "training_failed", "message": str(exc)[:500],
                                              "in_reply_to": env.seq}))
        self._results.put(res)

    def _train(self, key: tuple[str, int, str], spec: JobSpec, env: Envelope,
               secure: SecureRound | None) -> _Result:
        import torch

        from agent.trainer import train_local
        from medfl.models.weights import state_arrays
        job_id, rnd, b = str(env.job), int(env.round or 0), env.body
        attempt = int(b.get("attempt", 1))
        train = self._splits(spec.job.image_size)["train"]
        plan = None
        prior: tuple[SgdRun, ...] = ()
        if spec.privacy.enabled:
            plan = self.budget.plan(spec, n_train=len(train))
            try:
                job_eps, total_eps = self.budget.check(job_id, spec, plan, round=rnd)
            except PolicyViolation as exc:
                log.warning("refusing job %s round %d: %s", job_id, rnd, exc)
                return _Result(key, Envelope(type=MessageType.JOB_REFUSE, job=env.job, round=env.round,
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
                global_arrays=global_arrays, seed=seed, dp=plan, dp_prior=prior)
        body: dict[str, Any] = {"num_samples": result.num_samples, "train_loss": result.mean_loss,
                                "seconds": time.monotonic() - started}
        report: dict[str, Any] = {}
        if plan is not None:
            # on disk before the update leaves: a crash may over-count, never under-count
            report = {"epsilon": self.budget.record(job_id, plan, round=rnd, attempt=attempt), "delta": plan.delta}
            body.update(report, dp=plan.to_dict())
        log.info("job %s round %s: trained on %d samples, loss %.4f%s", env.job, env.round, result.num_samples,
                 result.mean_loss, f", epsilon {body['epsilon']:.3f}" if plan is not None else "")
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
            return _Result(key, vector=vector, report=report)
        return _Result(key, Envelope(type=MessageType.UPDATE, job=env.job, round=env.round, body=body,
                                     tensors=state_arrays(model)))

    def _keep_model(self, spec: JobSpec, env: Envelope) -> None:
        """Save the new global model of a round; the PACS scorer uses the newest one."""
        from medfl.models.weights import save_checkpoint

        path = self.cfg.agent.state_dir / "models" / str(env.job) / f"round-{int(env.round or 0):04d}.safetensors"
        save_checkpoint(path, {k: v.copy() for k, v in env.tensors.items()},
                        {"job_id": str(env.job), "round": str(env.round), "model": spec.job.model,
                         "model_args": json.dumps(spec.job.model_args, sort_keys=True),
                         "image_size": str(spec.job.image_size)})

    def _evaluate_worker(self, key: tuple[str, int, str], spec: JobSpec, env: Envelope,
                         secure: SecureRound | None = None) -> None:
        from agent.trainer import evaluate

        try:
            model = self._model(spec, {k: v.copy() for k, v in env.tensors.items()})
            m = evaluate(model, self._splits(spec.job.image_size)["val"])
            self._keep_model(spec, env)
            if secure is not None:
                from medfl.secagg.vector import pack_metrics

                log.info("job %s round %s: val auc %.4f acc %.4f (sent masked)", env.job, env.round, m["auc"],
                         m["accuracy"])
                self._results.put(_Result(key, vector=pack_metrics(m, clip_norm=secure.clip_norm,
                                                                   sample_cap=secure.sample_cap)))
                return
            out = Envelope(type=MessageType.METRICS, job=env.job, round=env.round,
                           body={k: float(m[k]) for k in ("n", "auc", "accuracy", "loss")})
            log.info("job %s round %s: val auc %.4f acc %.4f", env.job, env.round, m["auc"], m["accuracy"])
        except Exception as exc:
            log.exception("validation failed for job %s round %s", env.job, env.round)
            out = Envelope(type=MessageType.ERROR, job=env.job, round=env.round,
                           body={"code": "evaluation_failed", "message": str(exc)[:500], "in_reply_to": env.seq})
        self._results.put(_Result(key, out))
