"""A segmentation job through real daemons: secure aggregation, DP-SGD, the Dice in the secure sum.

Two hospitals hold synthetic BraTS-like cases (four MR sequences, tumour sub-regions) in the
BraTS layout on disk; the job trains a 3-D U-Net with DP-SGD and SecAgg, and the coordinator
learns each round's validation Dice only as a masked sum. A third hospital with chest X-rays
refuses the job at the offer, with the reason.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


def _add_seg_agent(fed, name: str, *, seed: int, n: int = 10) -> None:
    from medfl.data.synthetic import hospital_shifts
    from medfl.data.synthetic_seg import write_brats

    folder = fed.root / name
    write_brats(folder / "data", n=n, seed=50 + seed, size=16, shift=hospital_shifts(4, seed=3)[seed % 4])
    fed.run_cli("agent.cli", "init", "--dir", str(folder), "--name", name, "--coordinator", fed.endpoint,
                "--coordinator-key", str(fed.coord_dir / "keys" / "coordinator.key"), "--data", str(folder / "data"),
                "--allowed-models", "unet3d", "--max-epsilon-per-job", "50", "--max-total-epsilon", "100")
    assert 'kind = "brats"' in (folder / "agent.toml").read_text()
    fed.coordinator("nodes", "approve", str(folder / "keys" / "agent.key"))


SEG_JOB = """
[job]
name = "brats-it"
model = "unet3d"
task = "segmentation"
rounds = 2
min_agents = 2
round_deadline_s = 120
image_size = 16
seed = 3
model_args = { width = 4, depth = 2 }

[training]
local_epochs = 1
batch_size = 4
lr = 0.1

[aggregation]
secure = true

[privacy]
noise_multiplier = 1.0
max_grad_norm = 1.0
delta = 1e-5
"""


def test_a_secure_dp_segmentation_job_sums_the_dice(federation, tmp_path):
    fed = federation
    for i, name in enumerate(("site-a", "site-b")):
        _add_seg_agent(fed, name, seed=i)
    xray_dir = fed.add_agent("xray", seed=2)  # classification data: must refuse the segmentation job
    toml = xray_dir / "agent.toml"  # its policy allows the model: the refusal is about the data
    toml.write_text(toml.read_text().replace('allowed_models = [\n    "cnn",',
                                             'allowed_models = [\n    "unet3d",\n    "cnn",'))
    assert '"unet3d"' in toml.read_text()
    fed.start_coordinator()
    for name in ("site-a", "site-b", "xray"):
        fed.start_agent(name)
    fed.wait_online(3)
    job_file = tmp_path / "seg.toml"
    job_file.write_text(SEG_JOB)
    job_id = fed.coordinator("jobs", "submit", str(job_file)).strip()
    job = fed.wait_job(job_id, timeout=300)
    assert job.status == "done", (job.message, fed.log("coordinator")[-3000:], fed.log("site-a")[-3000:])
    rounds = fed.rounds(job_id)
    assert [r.round for r in rounds] == [1, 2]
    for r in rounds:
        assert r.agent_names == ("site-a", "site-b")
        assert r.val_auc is None and r.val_accuracy is None  # a segmentation job has no AUC
        assert r.val_loss is not None and r.val_loss > 0
        m = r.val_metrics
        assert set(m) == {"dice", "hd95", "dice_1", "dice_2", "dice_3"}
        assert 0.0 <= m["dice"] <= 1.0
        assert all(m[f"dice_{k}"] is None or 0.0 <= m[f"dice_{k}"] <= 1.0 for k in (1, 2, 3))
        assert r.epsilon is not None and r.epsilon > 0  # DP-SGD at both hospitals
    assert rounds[1].epsilon > rounds[0].epsilon
    # the validation Dice came as a masked sum: never as a clear METRICS message
    assert "METRICS from" not in fed.log("coordinator")
    assert "sent masked" in fed.log("site-a") and "val dice" in fed.log("site-a")
    # the chest X-ray site refused at the offer and said why
    xray = fed.log("xray")
    assert "segmentation job but this hospital's data set is 'folder'" in xray
    status = fed.status()
    table = next(j for j in status["jobs"] if j["id"] == job_id)["rounds_table"]
    assert math.isclose(table[-1]["val_metrics"]["dice"], rounds[-1].val_metrics["dice"])


def test_a_segmentation_job_whose_channels_do_not_fit_is_refused_at_the_offer(federation, tmp_path):
    fed = federation
    for i, name in enumerate(("site-a", "site-b")):
        _add_seg_agent(fed, name, seed=i, n=4)
    fed.start_coordinator()
    for name in ("site-a", "site-b"):
        fed.start_agent(name)
    fed.wait_online(2)
    job_file = tmp_path / "seg.toml"
    job_file.write_text(SEG_JOB.replace("model_args = { width = 4, depth = 2 }",
                                        "model_args = { width = 4, depth = 2, in_channels = 1 }"))
    job_id = fed.coordinator("jobs", "submit", str(job_file)).strip()
    fed.wait_for("the refusal", lambda: "takes 1 input channel(s); this hospital's cases have 4" in fed.log("site-a"),
                 timeout=60)
    fed.coordinator("jobs", "cancel", job_id)
