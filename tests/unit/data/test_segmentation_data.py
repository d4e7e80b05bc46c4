"""Segmentation loaders (MSD and BraTS layouts, real NIfTI files) and the synthetic generator (issue 19 item 2)."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medfl.data.segmentation import load_brats, load_msd
from medfl.data.synthetic import SiteShift, hospital_shifts
from medfl.data.synthetic_seg import BRATS_LABELS, brain_volumes, liver_slices, write_brats, write_msd


def test_generator_is_deterministic_multimodal_and_non_iid():
    a, la = brain_volumes(3, seed=4, size=24)
    b, lb = brain_volumes(3, seed=4, size=24)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert a.shape == (3, 4, 24, 24, 24) and a.dtype == np.float32 and set(np.unique(la)) <= {0, 1, 2, 4}
    imgs, labs = brain_volumes(8, seed=1, size=32)
    # each sub-region is told apart by a different sequence (BraTS: oedema on flair, enhancing on t1ce)
    flair, t1ce = imgs[:, 3], imgs[:, 1]
    assert flair[labs == 2].mean() > flair[labs == 0].mean() + 0.3
    assert t1ce[labs == 4].mean() > t1ce[labs == 2].mean() + 0.3
    assert t1ce[labs == 1].mean() < t1ce[labs == 4].mean() - 0.5
    shifts = hospital_shifts(3, seed=0)
    means = [brain_volumes(4, seed=9, size=24, shift=s)[0].mean() for s in shifts]
    assert len({round(float(m), 3) for m in means}) == 3  # the sites differ
    small = brain_volumes(6, seed=2, size=32, shift=SiteShift(positive_fraction=0.1))[1]
    large = brain_volumes(6, seed=2, size=32, shift=SiteShift(positive_fraction=0.6))[1]
    assert (large > 0).sum() > (small > 0).sum()  # population shift: more and larger tumours
    ct, lab = liver_slices(5, seed=3, size=48)
    assert ct.shape == (5, 1, 48, 48) and set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).any()
    assert ct[0, 0][lab[0] == 1].mean() > ct[0, 0][lab[0] == 0].mean()  # liver brighter than air/fat mix
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        brain_volumes(1, seed=0, size=8)


def test_brats_round_trip_through_nifti(tmp_path):
    write_brats(tmp_path, n=3, seed=1, size=24)
    s = load_brats(tmp_path, patch=(24, 24, 24))
    assert s.images.shape == (3, 4, 24, 24, 24) and s.labels.shape == (3, 24, 24, 24)
    assert s.skipped == [] and s.num_classes == 4 and s.channel_names == ["t1", "t1ce", "t2", "flair"]
    _, raw = brain_volumes(3, seed=1, size=24)
    assert np.array_equal(np.vectorize(BRATS_LABELS.get)(raw), s.labels)  # 4 -> 3, orientation kept
    # z-scored over non-zero voxels per channel
    nz = s.images[0, 0][s.images[0, 0] != 0]
    assert abs(float(nz.mean())) < 1e-3 and abs(float(nz.std()) - 1) < 1e-2
    cropped = load_brats(tmp_path, patch=(16, 20, 28))  # crop on two axes, pad on one
    assert cropped.images.shape == (3, 4, 16, 20, 28) and cropped.labels.shape == (3, 16, 20, 28)


def test_msd_round_trip_brain_and_liver(tmp_path):
    write_msd(tmp_path / "t1", task="brain", n=2, seed=2, size=24)
    s = load_msd(tmp_path / "t1", patch=(24, 24, 24))
    assert s.images.shape == (2, 4, 24, 24, 24) and s.channel_names == ["FLAIR", "T1", "T1CE", "T2"]
    assert set(np.unique(s.labels)) <= {0, 1, 2, 3} and s.num_classes == 4
    write_msd(tmp_path / "t3", task="liver", n=2, seed=3, size=32)
    s = load_msd(tmp_path / "t3", patch=(4, 32, 32))
    assert s.images.shape == (2, 1, 4, 32, 32) and 0.0 <= s.images.min() and s.images.max() <= 1.0  # CT window
    assert set(np.unique(s.labels)) <= {0, 1, 2} and (s.labels == 1).any()
    r = load_msd(tmp_path / "t3", patch=(8, 16, 16), spacing=(5.0, 1.6, 1.6))  # resampled: half the voxels
    assert r.images.shape == (2, 1, 8, 16, 16) and r.skipped == []


def test_every_bad_case_is_reported_with_its_reason(tmp_path):
    write_brats(tmp_path, n=6, seed=5, size=16)
    cases = sorted(p.name for p in tmp_path.iterdir())
    d = {c: tmp_path / c for c in cases}
    (d[cases[0]] / f"{cases[0]}_flair.nii.gz").unlink()  # missing sequence
    seg = nib.load(str(d[cases[1]] / f"{cases[1]}_seg.nii.gz"))
    bad = np.asarray(seg.dataobj).copy()
    bad[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(bad, seg.affine), str(d[cases[1]] / f"{cases[1]}_seg.nii.gz"))  # label 7
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 12), np.uint8), np.eye(4)),
             str(d[cases[2]] / f"{cases[2]}_seg.nii.gz"))  # shape mismatch
    (d[cases[3]] / f"{cases[3]}_t2.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 10))  # unreadable
    t1 = d[cases[4]] / f"{cases[4]}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:200])  # truncated
    s = load_brats(tmp_path, patch=(16, 16, 16))
    assert s.cases == [cases[5]] and s.images.shape == (1, 4, 16, 16, 16)
    got = {k.case: (k.reason, k.detail) for k in s.skipped}
    assert got[cases[0]][0] == "missing" and "flair" in got[cases[0]][1]
    assert got[cases[1]][0] == "label_values" and "[7]" in got[cases[1]][1]
    assert got[cases[2]][0] == "shape_mismatch" and "(12, 16, 16)" in got[cases[2]][1]
    assert got[cases[3]][0] == "unreadable" and "_t2.nii.gz" in got[cases[3]][1]
    assert got[cases[4]][0] == "unreadable" and "_t1.nii.gz" in got[cases[4]][1]
    assert "1 case(s) read, 5 left out" in s.report()


def test_msd_refuses_a_broken_description_and_reports_bad_entries(tmp_path):
    with pytest.raises(ValueError, match="has no dataset.json"):
        load_msd(tmp_path)
    (tmp_path / "dataset.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_msd(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="lacks the Decathlon fields"):
        load_msd(tmp_path)
    root = write_msd(tmp_path / "t", task="brain", n=2, seed=1, size=16)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/nothere.nii.gz", "label": "./labelsTr/nothere.nii.gz"})
    meta["training"].append({"image": "./imagesTr/x.nii.gz"})
    meta["modality"]["4"] = "DWI"  # dataset.json names 5 channels, the images hold 4
    (root / "dataset.json").write_text(json.dumps(meta))
    s = load_msd(root, patch=(16, 16, 16))
    assert s.cases == [] and len(s.skipped) == 4
    reasons = [k.reason for k in s.skipped]
    assert reasons.count("missing") == 4 and any("5 (FLAIR" in k.detail for k in s.skipped)
    with pytest.raises(ValueError, match="three positive integers"):
        load_msd(root, patch=(16, 16))


def test_segmentation_splits_hold_out_whole_cases_and_the_kind_is_detected(tmp_path):
    from agent.config import detect_data_kind
    from medfl.data.segmentation import load_segmentation_splits
    from medfl.errors import DataError

    brats = write_brats(tmp_path / "brats", n=7, seed=2, size=16)
    msd = write_msd(tmp_path / "msd", task="liver", n=3, seed=2, size=16)
    (tmp_path / "xray" / "train" / "NORMAL").mkdir(parents=True)
    assert detect_data_kind(brats) == "brats" and detect_data_kind(msd) == "msd"
    assert detect_data_kind(tmp_path / "xray") == "folder" and detect_data_kind(tmp_path / "a.npz") == "npz"
    splits, cases = load_segmentation_splits("brats", brats, patch=(16, 16, 16))
    assert len(splits["train"]) + len(splits["val"]) == 7 and len(splits["val"]) == 1
    x, y = splits["train"].tensors
    assert x.shape[1:] == (4, 16, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert cases.num_classes == 4 and not cases.skipped
    again, _ = load_segmentation_splits("brats", brats, patch=(16, 16, 16))
    assert torch.equal(again["val"].tensors[1], splits["val"].tensors[1])  # the same held-out case every time
    liver, lcases = load_segmentation_splits("msd", msd, patch=(4, 16, 16))
    assert lcases.num_classes == 3 and liver["train"].tensors[0].shape[1:] == (1, 4, 16, 16)
    with pytest.raises(DataError, match="did you mean 'brats'"):
        load_segmentation_splits("brat", brats, patch=(16, 16, 16))
    with pytest.raises(DataError, match="need at least 2 readable cases"):
        load_segmentation_splits("brats", write_brats(tmp_path / "one", n=1, seed=1, size=16), patch=(16, 16, 16))
    with pytest.raises(DataError, match="no dataset.json"):
        load_segmentation_splits("msd", brats, patch=(16, 16, 16))
