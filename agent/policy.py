"""The agent's local policy: which jobs and rounds this hospital takes part in.

The coordinator cannot override it: every JOB_OFFER and TRAIN request passes through
:func:`check_job` / :func:`check_round`, which raise :class:`~medfl.errors.PolicyViolation`
with the value seen and the fix; the agent sends the message back as JOB_REFUSE.
"""

from __future__ import annotations

from agent.config import InferenceSection, PolicySection
from medfl.errors import PolicyViolation
from medfl.jobspec import JobSpec

__all__ = ["check_budget", "check_inference", "check_job", "check_round"]


def check_job(policy: PolicySection, job: JobSpec) -> None:
    """Raise PolicyViolation unless the policy allows taking part in ``job``.

    Parameters
    ----------
    policy : PolicySection
        The ``[policy]`` table of agent.toml.
    job : JobSpec
        The offered job.
    """
    if job.job.model not in policy.allowed_models:
        raise PolicyViolation(
            f"job {job.job.name!r} asks for model {job.job.model!r} but agent.toml policy.allowed_models="
            f"{list(policy.allowed_models)}; add it to the list or submit the job with an allowed model")
    if job.job.min_agents < policy.min_parties:
        raise PolicyViolation(
            f"job {job.job.name!r} allows aggregates of min_agents={job.job.min_agents} but agent.toml "
            f"policy.min_parties={policy.min_parties}; raise the job's min_agents or lower the local minimum")
    agg = job.aggregation
    if not agg.secure and policy.require_secure_aggregation:
        raise PolicyViolation(
            f"job {job.job.name!r} uses plain aggregation (aggregation.secure = false), so the coordinator would see "
            "this hospital's model update, but agent.toml policy.require_secure_aggregation = true; submit the job "
            "with secure aggregation or set require_secure_aggregation = false")
    if agg.secure and agg.threshold and agg.threshold < policy.min_parties:
        raise PolicyViolation(
            f"job {job.job.name!r} sets aggregation.threshold={agg.threshold}: a sum of that many agents could be "
            f"unmasked, but agent.toml policy.min_parties={policy.min_parties}; raise the threshold or lower the "
            "local minimum")
    _check_privacy(policy, job)


def _check_client_dp(policy: PolicySection, job: JobSpec) -> None:
    dp, name = job.privacy, job.job.name
    client = dp.enabled and dp.level in ("client", "both")
    if not client:
        if policy.require_client_dp or policy.max_client_epsilon is not None:
            raise PolicyViolation(
                f"job {name!r} has no client-level DP (privacy.level = {dp.level!r}"
                f"{'' if dp.enabled else ', disabled'}) but agent.toml policy.require_client_dp = "
                f"{str(policy.require_client_dp).lower()} / "
                f"max_client_epsilon = {policy.max_client_epsilon}; submit the job with [privacy] level = \"client\" "
                "(or \"both\") and client_noise_multiplier, or lift the local requirement")
        return
    if not job.aggregation.secure:
        raise PolicyViolation(f"job {name!r} asks client-level DP without secure aggregation: the coordinator would "
                              "see this hospital's noised update alone; set aggregation.secure = true")
    if policy.max_client_epsilon is None or dp.client_noise_multiplier is None:
        return
    from medfl.privacy.ddg_accountant import planned_epsilon  # lazy: dp_accounting loads in seconds

    eps = planned_epsilon(noise_multiplier=dp.client_noise_multiplier, rounds=job.job.rounds, delta=dp.delta)
    if eps > policy.max_client_epsilon:
        raise PolicyViolation(
            f"job {name!r} plans client-level epsilon={eps:.3g} (client_noise_multiplier="
            f"{dp.client_noise_multiplier:g}, "
            f"{job.job.rounds} rounds, delta={dp.delta:g}, worst case: every round at its threshold) but agent.toml "
            f"policy.max_client_epsilon={policy.max_client_epsilon:g}; raise the job's client_noise_multiplier, "
            "run fewer rounds, or raise the local limit")


def _check_privacy(policy: PolicySection, job: JobSpec) -> None:
    _check_client_dp(policy, job)
    dp, name = job.privacy, job.job.name
    if dp.client_level and not dp.sample_level and policy.limits_privacy:
        raise PolicyViolation(
            f"job {name!r} has client-level DP only (privacy.level = \"client\"), but agent.toml sets "
            f"policy.max_epsilon_per_job={policy.max_epsilon_per_job} / policy.max_total_epsilon="
            f"{policy.max_total_epsilon}, which the privacy ledger checks against DP-SGD; submit the job with "
            "level = \"both\" (DP-SGD as well) or cap it with policy.max_client_epsilon instead")
    if not dp.sample_level:
        if policy.limits_privacy:
            raise PolicyViolation(
                f"job {name!r} trains without differential privacy (epsilon = inf) but agent.toml sets "
                f"policy.max_epsilon_per_job={policy.max_epsilon_per_job} / policy.max_total_epsilon="
                f"{policy.max_total_epsilon}; add a [privacy] section to the job")
        return
    if policy.max_delta is not None and dp.delta > policy.max_delta:
        raise PolicyViolation(f"job {name!r} asks delta={dp.delta:g} but agent.toml policy.max_delta="
                              f"{policy.max_delta:g}; lower the job's delta or raise the local limit")
    if dp.target_epsilon is not None and policy.max_epsilon_per_job is not None \
            and dp.target_epsilon > policy.max_epsilon_per_job:
        raise PolicyViolation(f"job {name!r} asks epsilon={dp.target_epsilon:g} but agent.toml "
                              f"policy.max_epsilon_per_job={policy.max_epsilon_per_job:g}; lower the job's "
                              "budget or raise the local limit")


def check_budget(policy: PolicySection, *, job_name: str, round: int, job_epsilon: float, job_delta: float,
                 total_epsilon: float) -> None:
    """Raise PolicyViolation if training a round would take the job or the dataset past its budget.

    Parameters
    ----------
    policy : PolicySection
        The ``[policy]`` table of agent.toml.
    job_name : str
        For the message.
    round : int
        The round about to be trained.
    job_epsilon : float
        The job's epsilon at ``job_delta`` if this round is trained (earlier rounds included).
    job_delta : float
        The job's delta.
    total_epsilon : float
        The dataset's epsilon at ``policy.total_delta`` over every job, this round included.
    """
    cap = policy.max_epsilon_per_job
    if cap is not None and job_epsilon > cap:
        raise PolicyViolation(
            f"privacy budget: round {round} of job {job_name!r} would bring its epsilon to {job_epsilon:.3f} "
            f"(delta={job_delta:g}) but agent.toml policy.max_epsilon_per_job={cap:g}; this agent stops "
            "training for the job. Use more noise, fewer steps or rounds, or raise the local limit")
    cap = policy.max_total_epsilon
    if cap is not None and total_epsilon > cap:
        raise PolicyViolation(
            f"privacy budget: round {round} of job {job_name!r} would bring this dataset's total epsilon over "
            f"all jobs to {total_epsilon:.3f} (delta={policy.total_delta:g}) but agent.toml "
            f"policy.max_total_epsilon={cap:g}; the data's budget is spent, raise the limit only if the "
            "data owner agrees")


def check_round(policy: PolicySection, participants: int) -> None:
    """Raise PolicyViolation if a round's aggregate would have too few parties.

    Parameters
    ----------
    policy : PolicySection
        The ``[policy]`` table of agent.toml.
    participants : int
        Number of agents the coordinator sent this round to.
    """
    if participants < policy.min_parties:
        raise PolicyViolation(
            f"round has {participants} participant(s) but agent.toml policy.min_parties={policy.min_parties}; "
            "wait for more hospitals or lower the local minimum")


def check_inference(policy: PolicySection, inference: InferenceSection, model: str) -> None:
    """Raise PolicyViolation unless this agent may ask for encrypted inference of ``model``.

    Parameters
    ----------
    policy : PolicySection
        The ``[policy]`` table (allowed models).
    inference : InferenceSection
        The ``[inference]`` table (allowed at all, where, which keys are trusted).
    model : str
        The model id to ask for.
    """
    if not inference.allow_encrypted:
        raise PolicyViolation("agent.toml inference.allow_encrypted=false; set it to true to let this agent "
                              "request encrypted inference")
    if model not in policy.allowed_models:
        raise PolicyViolation(f"encrypted inference of model {model!r} but agent.toml policy.allowed_models="
                              f"{list(policy.allowed_models)}; add it or ask for an allowed model")
    if not inference.trusted_dealers:
        raise PolicyViolation("agent.toml inference.trusted_dealers is empty; add the dealer's public key "
                              "(its operator hands over dealer.key) so its material can be checked")
