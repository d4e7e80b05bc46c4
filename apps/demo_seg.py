"""The segmentation demo's own parts: BraTS-like cases per hospital, the job, the Dice plot, the masks.

``medfl demo --task segmentation`` runs the same federation as the chest X-ray demo
(:mod:`apps.demo`: a coordinator and N agents as real processes, secure aggregation, DP-SGD
on by default), with synthetic four-sequence brain MR volumes in the BraTS layout on each
hospital's disk (:func:`medfl.data.synthetic_seg.write_brats`, non-IID by site), a 3-D U-Net,
and the validation Dice per tumour sub-region summed under secure aggregation. At the end it
plots Dice per round and draws, for one validation case of each hospital, the FLAIR slice
with the true and the predicted sub-regions side by side, from the final global model.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

__all__ = ["CLASS_NAMES", "format_seg_table", "job_toml", "masks_figure", "plot_dice", "round_row", "write_data"]

#: BraTS sub-regions in medfl's class order (1, 2, 3)
CLASS_NAMES = ("necrosis", "oedema", "enhancing")
#: the demo's 3-D U-Net: width 8, depth 3 (0.4 M parameters) on 32^3 patches
SEG_MODEL = "unet3d"
SEG_SIZE = 32
#: training settings measured in-process on the demo data (34 training cases of one hospital):
#: Adam at 0.01 with batches of 2 finds oedema after 4 epochs and the enhancing core after 16
SEG_LR = 0.01
SEG_BATCH = 2
SEG_LOCAL_EPOCHS = 3


def write_data(out: pathlib.Path, names: list[str], *, cases: int, seed: int, progress: bool) -> None:
    """Write ``cases`` BraTS-layout cases per hospital under ``out/<name>/data``, non-IID by site."""
    from tqdm import tqdm

    from medfl.data.synthetic import hospital_shifts
    from medfl.data.synthetic_seg import write_brats

    shifts = hospital_shifts(len(names), seed=seed)
    for i, name in enumerate(tqdm(names, desc="synthetic MR cases", unit="hospital", disable=not progress)):
        write_brats(out / name / "data", n=cases, seed=seed * 1000 + i, size=SEG_SIZE, shift=shifts[i],
                    prefix=f"BraTS-{name}")


def job_toml(*, rounds: int, agents: int, seed: int, secure: bool, neighbours: int, privacy: str) -> str:
    """The demo's segmentation job file (``privacy``: its [privacy] table, "" without DP)."""
    return f"""# demo segmentation job: written by 'medfl demo --task segmentation'
[job]
name = "demo-brats"
model = "{SEG_MODEL}"
task = "segmentation"
rounds = {rounds}
min_agents = {agents}
round_deadline_s = 900
max_round_retries = 3
seed = {seed}
image_size = {SEG_SIZE}

[training]
local_epochs = {SEG_LOCAL_EPOCHS}
batch_size = {SEG_BATCH}
optimizer = "adam"
lr = {SEG_LR}

[aggregation]
strategy = "fedavg"
secure = {"true" if secure else "false"}
neighbours = {neighbours}
{privacy}"""


def round_row(r: dict[str, Any]) -> dict[str, Any]:
    """One round of the summary JSON from a ``status --json`` round."""
    m = r.get("val_metrics") or {}
    return {"round": r["round"], "agents": r["agents"], "agent_names": r["agent_names"],
            "val_dice": m.get("dice"), "val_dice_per_class": {c: m.get(f"dice_{k}") for k, c in
                                                              enumerate(CLASS_NAMES, start=1)},
            "val_hd95": m.get("hd95"), "val_loss": r["val_loss"], "train_loss": r["train_loss"],
            "seconds": round(r["seconds"], 2), "epsilon": r.get("epsilon"), "epsilons": r.get("epsilons") or {},
            "client_epsilon": r.get("client_epsilon")}


def plot_dice(rounds: list[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """Dice per round (mean and per sub-region) and the losses, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["round"] for r in rounds]

    def series(values: list[float | None]) -> list[float]:
        return [np.nan if v is None else v for v in values]

    ax1.plot(xs, series([r["val_dice"] for r in rounds]), "o-", lw=2, label="mean Dice")
    for c in CLASS_NAMES:
        ax1.plot(xs, series([r["val_dice_per_class"][c] for r in rounds]), "--", marker=".", label=c)
    ax1.set_ylim(0.0, 1.0)
    ax1.set_title("Global model: validation Dice (secure sum)")
    ax2.plot(xs, series([r["train_loss"] for r in rounds]), "o-", label="local training loss")
    ax2.plot(xs, series([r["val_loss"] for r in rounds]), "s--", label="validation loss")
    ax2.set_title("Dice + cross-entropy loss")
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def masks_figure(out: pathlib.Path, names: list[str], checkpoint: pathlib.Path, path: pathlib.Path
                 ) -> dict[str, Any]:
    """Draw, per hospital, one validation case: FLAIR, true and predicted sub-regions; return their Dice.

    The case is the one with the most tumour among those the hospital's agent held out (the same
    split), scored by the final global model; the slice shown is the one with the most tumour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.colors import ListedColormap

    from medfl.data.segmentation import load_segmentation_splits
    from medfl.models import create_model
    from medfl.models.weights import load_checkpoint, load_state_arrays
    from medfl.segmentation.metrics import segmentation_metrics

    arrays, meta = load_checkpoint(checkpoint)
    import json

    model = create_model(meta.get("model", SEG_MODEL), **json.loads(meta.get("model_args", "{}")))
    load_state_arrays(model, arrays)
    model.eval()
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.75), (0.2, 0.8, 0.2, 0.6), (1.0, 0.85, 0.1, 0.8)])
    fig, axes = plt.subplots(len(names), 3, figsize=(7.5, 2.6 * len(names)), squeeze=False)
    cases: dict[str, Any] = {}
    for row, name in zip(axes, names, strict=True):
        splits, _ = load_segmentation_splits("brats", out / name / "data", patch=(SEG_SIZE,) * 3)
        xs, ys = splits["val"].tensors
        i = int(np.argmax((ys > 0).flatten(1).sum(1).numpy()))  # the held-out case with the most tumour
        x, y = xs[i:i + 1], ys[i:i + 1]
        with torch.no_grad():
            pred = model(x).argmax(1)
        m = segmentation_metrics(pred, y, 4, hd95=False)
        cases[name] = {"mean_dice": m["mean_dice"], "dice": dict(zip(CLASS_NAMES, m["dice"], strict=True))}  # type: ignore[call-overload]
        z = int(np.argmax((y[0] > 0).sum(dim=(1, 2)).numpy()))
        flair = x[0, 3, z].numpy()
        for ax, title, mask in ((row[0], f"{name}: FLAIR", None), (row[1], "truth", y[0, z]),
                                (row[2], f"prediction (Dice {m['mean_dice']:.2f})", pred[0, z])):
            ax.imshow(flair, cmap="gray")
            if mask is not None:
                ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("red necrosis, green oedema, yellow enhancing", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"path": str(path), "cases": cases}


def format_seg_table(summary: dict[str, Any]) -> str:
    """The per-round table of a segmentation demo."""
    delta = summary.get("delta")
    eps_head = f"eps@{delta:g}" if delta else "epsilon"
    head = " ".join(f"{c[:8]:>8}" for c in CLASS_NAMES)
    lines = [f"{'round':>5} {'agents':>6} {'dice':>8} {head} {'hd95':>8} {'val_loss':>8} {eps_head:>10} "
             f"{'seconds':>8}"]
    for r in summary["rounds"]:
        eps = r.get("epsilon")
        eps_s = f"{eps:>10.3f}" if eps is not None else f"{'no DP':>10}"
        per = " ".join(_f(r["val_dice_per_class"][c]) for c in CLASS_NAMES)
        lines.append(f"{r['round']:>5} {r['agents']:>6} {_f(r['val_dice'])} {per} {_f(r['val_hd95'])} "
                     f"{_f(r['val_loss'])} {eps_s} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def _f(v: float | None, w: int = 8) -> str:
    return f"{v:>{w}.4f}" if v is not None else f"{'n/a':>{w}}"
