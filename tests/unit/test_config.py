"""Configuration files report every bad key at once, by its TOML path."""

from __future__ import annotations

import pathlib

import pytest

from agent.config import load_config as load_agent
from coordinator.config import load_config as load_coordinator
from medfl.errors import ConfigError
from medfl.jobspec import load_job


def _write(tmp_path: pathlib.Path, name: str, text: str) -> pathlib.Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_job_reports_every_problem_by_path(tmp_path):
    p = _write(tmp_path, "job.toml", """
[job]
name = "x"
model = "resnet81"
rounds = 0
min_agents = "three"
image_size = 8
colour = "blue"

[training]
lr = -1.0
batchsize = 32

[aggregation]
strategy = "fedavgg"
""")
    with pytest.raises(ConfigError) as info:
        load_job(p)
    paths = {path for path, _ in info.value.problems}
    assert {"job.colour", "job.min_agents", "training.batchsize", "training.lr",
            "aggregation.strategy"} <= paths
    text = str(info.value)
    assert "did you mean 'batch_size'" in text
    assert "did you mean 'fedavg'" in text
    assert str(p) in text


def test_job_range_checks_after_types(tmp_path):
    p = _write(tmp_path, "job.toml", '[job]\nname = "x"\nmodel = "resnet81"\nrounds = 0\nimage_size = 8\n')
    with pytest.raises(ConfigError) as info:
        load_job(p)
    paths = {path for path, _ in info.value.problems}
    assert paths == {"job.model", "job.rounds", "job.image_size"}
    assert "did you mean 'resnet18'" in str(info.value)


def test_valid_job_round_trips_through_dict(tmp_path):
    from medfl.jobspec import job_from_dict

    p = _write(tmp_path, "job.toml", '[job]\nname = "ok"\nrounds = 3\n[aggregation]\nstrategy = "fedprox"\n')
    spec = load_job(p)
    assert spec.job.rounds == 3 and spec.prox_mu == pytest.approx(0.01)
    assert job_from_dict(spec.to_dict()) == spec


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_job(tmp_path / "nope.toml")
    p = _write(tmp_path, "bad.toml", "[job\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(p)


def test_agent_config_every_problem(tmp_path):
    p = _write(tmp_path, "agent.toml", """
[agent]
name = ""
state_dir = 5

[coordinator]
endpoint = "http://example"

[data]
kind = "zip"

[policy]
allowed_models = ["cnn", "vgg"]
min_parties = 0

[training]
torch_threads = -1
""")
    with pytest.raises(ConfigError) as info:
        load_agent(p)
    paths = {path for path, _ in info.value.problems}
    assert {"agent.state_dir", "coordinator.endpoint", "data.kind", "data.path", "policy.allowed_models[1]",
            "policy.min_parties", "training.torch_threads"} <= paths


def test_agent_config_curve_needs_keys(tmp_path):
    p = _write(tmp_path, "agent.toml", """
[agent]
name = "a"
state_dir = "s"
[coordinator]
endpoint = "tcp://127.0.0.1:1"
[data]
path = "d"
""")
    with pytest.raises(ConfigError) as info:
        load_agent(p)
    paths = {path for path, _ in info.value.problems}
    assert paths == {"keys.secret_key_file", "coordinator.public_key_file"}


def test_agent_relative_paths_resolve_against_the_file(tmp_path):
    p = _write(tmp_path, "agent.toml", """
[agent]
name = "a"
state_dir = "state"
[coordinator]
endpoint = "tcp://127.0.0.1:1"
[data]
path = "data"
[transport]
curve = false
""")
    cfg = load_agent(p)
    assert cfg.data.path == tmp_path.resolve() / "data"
    assert cfg.agent.state_dir == tmp_path.resolve() / "state"


def test_coordinator_config_problems(tmp_path):
    p = _write(tmp_path, "c.toml", """
[coordinator]
bind = "0.0.0.0:7777"
state_dir = "s"
[transport]
max_message_mb = 0
[liveness]
agent_timeout_s = -1
""")
    with pytest.raises(ConfigError) as info:
        load_coordinator(p)
    paths = {path for path, _ in info.value.problems}
    assert {"coordinator.bind", "transport.max_message_mb", "liveness.agent_timeout_s"} <= paths


def test_secure_aggregation_is_the_default_and_is_checked(tmp_path):
    from medfl.jobspec import job_from_dict

    spec = load_job(_write(tmp_path, "ok.toml", '[job]\nname = "ok"\n'))
    agg = spec.aggregation
    assert agg.secure and agg.threshold == 0 and agg.neighbours == 0
    assert [agg.threshold_for(n) for n in (2, 3, 4, 10)] == [2, 2, 3, 7]
    assert job_from_dict({"job": {"name": "x"}, "aggregation": {"neighbours": 4}}).aggregation.label == "secagg+"
    assert job_from_dict({"job": {"name": "x"}, "aggregation": {"secure": False}}).aggregation.label == "plain"
    p = _write(tmp_path, "bad.toml", """
[job]
name = "x"
min_agents = 1
[aggregation]
threshold = 1
neighbours = -2
clip_norm = 0.0
frac_bits = 60
""")
    with pytest.raises(ConfigError) as info:
        load_job(p)
    paths = {path for path, _ in info.value.problems}
    assert {"aggregation.threshold", "aggregation.neighbours", "aggregation.clip_norm",
            "aggregation.frac_bits"} <= paths
    p = _write(tmp_path, "cross.toml", '[job]\nname = "x"\nmin_agents = 1\n')
    with pytest.raises(ConfigError, match="secure aggregation needs at least 2 agents"):
        load_job(p)
    p = _write(tmp_path, "wrap.toml", '[job]\nname = "x"\n[aggregation]\nclip_norm = 1e9\nfrac_bits = 40\n')
    with pytest.raises(ConfigError, match="64-bit ring"):
        load_job(p)
    plain = _write(tmp_path, "plain.toml", '[job]\nname = "x"\nmin_agents = 1\n[aggregation]\nsecure = false\n')
    assert not load_job(plain).aggregation.secure


def test_type_errors_do_not_hide_range_and_registry_checks(tmp_path):
    p = _write(tmp_path, "job.toml", '[job]\nname = "x"\nrounds = "2"\nmodel = "cnn3"\n'
                                     '[aggregation]\nclip_norm = "big"\nstrategy = "fedavgg"\n')
    with pytest.raises(ConfigError) as info:
        load_job(p)
    paths = [path for path, _ in info.value.problems]
    assert sorted(paths) == ["aggregation.clip_norm", "aggregation.strategy", "job.model", "job.rounds"]
    assert "write rounds = 2 without quotes" in str(info.value)


def test_table_level_problems_name_the_table(tmp_path):
    p = _write(tmp_path, "job.toml", '[job]\nname = "x"\n[privacy]\nnoise_multiplyer = 1.0\n')
    with pytest.raises(ConfigError) as info:
        load_job(p)
    assert dict(info.value.problems).keys() == {"privacy.noise_multiplyer", "privacy"}
    assert "did you mean 'noise_multiplier'" in str(info.value)
    assert "privacy.:" not in str(info.value)


def test_agent_and_coordinator_report_types_and_ranges_together(tmp_path):
    p = _write(tmp_path, "agent.toml", '[agent]\nname = ""\nstate_dir = 5\n[coordinator]\nendpoint = "tcp://h:1"\n'
                                       '[data]\npath = "d"\n[transport]\ncurve = false\n'
                                       '[training]\ntorch_threads = "2"\ndevice = "gpu"\n')
    with pytest.raises(ConfigError) as info:
        load_agent(p)
    assert {path for path, _ in info.value.problems} == {"agent.name", "agent.state_dir", "training.torch_threads",
                                                         "training.device"}
    p = _write(tmp_path, "c.toml", '[coordinator]\nbind = "0.0.0.0:7777"\nstate_dir = 3\n'
                                   '[liveness]\nagent_timeout_s = "20"\neval_deadline_s = -1\n')
    with pytest.raises(ConfigError) as info:
        load_coordinator(p)
    assert {path for path, _ in info.value.problems} == {"coordinator.bind", "coordinator.state_dir",
                                                         "liveness.agent_timeout_s", "liveness.eval_deadline_s",
                                                         "keys.secret_key_file"}


def test_a_tilde_path_of_an_unknown_user_is_a_config_problem_not_a_crash(tmp_path):
    # found by the fuzzer: pathlib's expanduser raises RuntimeError for "~name" of a user who does not exist
    cfg = tmp_path / "coordinator.toml"
    cfg.write_text('[coordinator]\nbind = "tcp://0.0.0.0:7777"\nstate_dir = "~no-such-user-medfl"\n'
                   'name = "regional"\n')
    with pytest.raises(ConfigError, match=r"coordinator\.state_dir.*cannot expand '~no-such-user-medfl'"):
        load_coordinator(cfg)
