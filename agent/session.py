"""The agent's side of jobs, without a transport: offers, rounds and secure sums in, replies out.

:class:`JobSession` holds what an agent knows about its jobs (the specs it accepted, the round
in progress, the open secure sums) and turns each coordinator message (JOB_OFFER, TRAIN,
EVALUATE, the secure-aggregation messages) into the envelopes to send back; :meth:`JobSession.flush`
turns finished local work (:class:`~agent.rounds.RoundWorker` results) into replies. Every job
offer and every round passes the local policy first. It never touches a socket: the daemon
(:mod:`agent.service`) sends what it returns over CurveZMQ, and the simulation
(:mod:`apps.simulate`) passes it between Ray actors, so both run this same code.

In a secure round (TRAIN / EVALUATE carry ``secure``) the agent never sends its weights or
metrics: :class:`~agent.secure.SecureRound` exchanges keys while the worker trains, then masks
the weighted delta (or the weighted metrics) laid out as :mod:`medfl.secagg.vector` says. The
round's ``secure`` parameters are checked against the job this agent accepted
(:func:`agent.secure.open_secure`).
"""

from __future__ import annotations

import logging
import queue

from agent import policy
from agent.config import AgentConfig
from agent.rounds import RoundWorker
from agent.secure import SecureRound, open_secure
from medfl.errors import ConfigError, DataError, MedflError, PolicyViolation
from medfl.jobspec import JobSpec, job_from_dict
from medfl.secagg.envelopes import SECAGG_TO_AGENT
from medfl.wire import Envelope, MessageType

__all__ = ["JOB_MESSAGES", "JobSession"]

log = logging.getLogger(__name__)

#: the coordinator messages a :class:`JobSession` handles
JOB_MESSAGES = frozenset({MessageType.JOB_OFFER, MessageType.TRAIN, MessageType.EVALUATE, *SECAGG_TO_AGENT})


class JobSession:
    """One agent's jobs, rounds and secure sums.

    Parameters
    ----------
    cfg : AgentConfig
        Parsed agent.toml (the policy).
    work : RoundWorker
        Trains and validates in worker threads.
    """

    def __init__(self, cfg: AgentConfig, work: RoundWorker):
        self.cfg = cfg
        self.work = work
        self.jobs: dict[str, JobSpec] = {}
        #: (job, round, kind) of the work in progress; a result for another key is stale
        self.current: tuple[str, int, str] | None = None
        self._secure: dict[str, SecureRound] = {}  # phase -> the open secure sum

    def handle(self, env: Envelope) -> list[Envelope]:
        """The replies to one coordinator message of :data:`JOB_MESSAGES`."""
        mtype = env.type
        if mtype == MessageType.JOB_OFFER:
            return self._on_offer(env)
        if mtype == MessageType.TRAIN:
            return self._on_train(env)
        if mtype == MessageType.EVALUATE:
            return self._on_evaluate(env)
        if mtype in SECAGG_TO_AGENT:
            return self._on_secagg(env)
        raise ValueError(f"JobSession does not handle {mtype}")

    def flush(self) -> list[Envelope]:
        """The replies of the local work finished since the last call (stale results are dropped)."""
        out: list[Envelope] = []
        while True:
            try:
                res = self.work.results.get_nowait()
            except queue.Empty:
                return out
            if res.key != self.current:
                log.info("dropping stale %s result for job %s round %d", res.key[2], res.key[0], res.key[1])
                continue
            self.current = None
            if res.env is not None:
                out.append(res.env)
            if res.vector is not None:
                run = self._secure.get("fit" if res.key[2].startswith("train") else "evaluate")
                if run is None:
                    log.warning("no secure sum open for the %s result of round %d; dropped", res.key[2], res.key[1])
                    continue
                try:
                    out += run.set_vector(res.vector, report=res.report)
                except MedflError as exc:
                    log.warning("secure %s of round %d failed: %s", run.session.phase, res.key[1], exc)

    @staticmethod
    def _refuse(env: Envelope, reason: str) -> list[Envelope]:
        log.warning("refusing job %s: %s", env.job, reason)
        return [Envelope(type=MessageType.JOB_REFUSE, job=env.job, round=env.round, body={"reason": reason})]

    def _on_offer(self, env: Envelope) -> list[Envelope]:
        try:
            spec = job_from_dict(dict(env.body), source="JOB_OFFER")
            policy.check_job(self.cfg.policy, spec)
            self.work.job_data(spec)  # the task, channels and classes must fit this hospital's data
        except (ConfigError, PolicyViolation, DataError, ValueError) as exc:
            return self._refuse(env, str(exc))
        self.jobs[str(env.job)] = spec
        log.info("accepted job %s (%s, model %s, %d rounds)", env.job, spec.job.name, spec.job.model,
                 spec.job.rounds)
        return [Envelope(type=MessageType.JOB_ACCEPT, job=env.job)]

    def _on_train(self, env: Envelope) -> list[Envelope]:
        spec = self.jobs.get(str(env.job))
        if spec is None:
            return self._refuse(env, f"job {env.job} was never offered to or accepted by this agent")
        try:
            policy.check_round(self.cfg.policy, int(env.body.get("participants", 0)))
            run, out = self._open_secure(spec, env)
        except (PolicyViolation, MedflError) as exc:
            return self._refuse(env, str(exc))
        key = (str(env.job), int(env.round or 0), f"train#{env.body.get('attempt', 1)}")
        self.current = key
        self.work.start_train(key, spec, env, run)
        return out

    def _open_secure(self, spec: JobSpec, env: Envelope) -> tuple[SecureRound | None, list[Envelope]]:
        """Start the secure sum a TRAIN / EVALUATE asks for (with the keys to send now); None for a plain round."""
        run = open_secure(spec=spec, env=env, policy=self.cfg.policy)
        if run is None:
            return None, []
        if env.type == MessageType.TRAIN:
            self._secure.clear()  # a new round (or attempt) supersedes every open secure sum
        self._secure[run.session.phase] = run
        return run, [run.start()]

    def _on_secagg(self, env: Envelope) -> list[Envelope]:
        phase = env.body.get("phase")
        run = self._secure.get(phase) if isinstance(phase, str) else None
        if run is None:
            log.warning("ignoring %s for job %s round %s: no secure sum open for phase %r", env.type, env.job,
                        env.round, phase)
            return []
        try:
            return run.on_message(env)
        except PolicyViolation as exc:
            log.warning("secure %s of round %s: %s", run.session.phase, env.round, exc)
            return self._refuse(env, str(exc))

    def _on_evaluate(self, env: Envelope) -> list[Envelope]:
        spec = self.jobs.get(str(env.job))
        if spec is None:
            log.warning("EVALUATE for unknown job %s ignored", env.job)
            return []
        try:
            run, out = self._open_secure(spec, env)
        except (PolicyViolation, MedflError) as exc:
            return self._refuse(env, str(exc))
        key = (str(env.job), int(env.round or 0), "evaluate")
        self.current = key
        self.work.start_evaluate(key, spec, env, run)
        return out
