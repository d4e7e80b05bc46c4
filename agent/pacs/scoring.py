"""From a DICOM chest X-ray to a score: validation, pixel decoding, LUTs, and the model.

Validation (:func:`check_dataset`) decides, before the C-STORE is acknowledged, whether an
instance can be scored at all, and with which DICOM status it is refused otherwise.
Preprocessing applies the Modality LUT, the VOI LUT (window) when present, inverts
MONOCHROME1, scales to [0, 1] and resizes to the model's input. The model is the agent's latest
federated checkpoint (written by the agent after every round) or the file named in agent.toml.

References
----------
.. [1] DICOM PS3.3 C.11 (Modality and VOI LUT), C.7.6.3.1.2 (Photometric Interpretation),
   PS3.4 Table B.2-1 (C-STORE status codes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pathlib
import threading
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medfl.errors import DataError, StateError
from medfl.safetext import escape

__all__ = ["SCORABLE_SOP_CLASSES", "Rejection", "Scorer", "check_dataset", "preprocess", "read_instance"]

log = logging.getLogger(__name__)

#: CR, DX for presentation, DX for processing, Secondary Capture
SCORABLE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX for presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX for processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
}

STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Rejection:
    """Why an instance cannot be scored, and the C-STORE status that says so."""

    status: int
    reason: str


def read_instance(data: bytes) -> tuple[Dataset, str, str]:
    """Parse one encoded instance: the data set, its SOP Instance UID and its SOP Class UID ("" if absent).

    Parameters
    ----------
    data : bytes
        The instance as received (C-STORE data set or a file of the watch folder).

    Raises
    ------
    DataError
        pydicom cannot parse it, or the UIDs cannot be read (the caller quarantines it).
    """
    try:
        ds = dcmread(io.BytesIO(data))
        return ds, str(ds.SOPInstanceUID), str(getattr(ds, "SOPClassUID", ""))
    except Exception as exc:  # pydicom raises many types on garbage
        raise DataError(f"cannot parse the DICOM data set: {type(exc).__name__}") from None


def check_dataset(ds: Dataset) -> Rejection | None:
    """Return why ``ds`` cannot be scored (with its DICOM status), or None if it can.

    Parameters
    ----------
    ds : pydicom Dataset
        The received instance (with file meta).

    Notes
    -----
    Never raises: pydicom parses elements lazily, so an element it cannot convert (an unknown
    VR, a non-numeric IS value) fails only when read here; such an instance is refused with
    0xC000 (cannot understand), as DCMTK's storescp refuses what it cannot parse.
    """
    try:
        return _check(ds)
    except Exception as exc:  # pydicom raises many types on malformed elements
        return Rejection(STATUS_CANNOT_UNDERSTAND, f"cannot read the data set's attributes: {type(exc).__name__}: "
                                                   f"{escape(exc, limit=120)}")


def _check(ds: Dataset) -> Rejection | None:
    from pydicom.pixels import get_decoder

    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class not in SCORABLE_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "missing"
        return Rejection(STATUS_SOP_CLASS_NOT_SUPPORTED,
                         f"SOP class {name} is not a chest X-ray image (CR, DX or Secondary Capture)")
    if "PixelData" not in ds:
        return Rejection(STATUS_DATASET_MISMATCH, "the instance has no Pixel Data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames != 1:
        return Rejection(STATUS_DATASET_MISMATCH, f"multi-frame image ({frames} frames); one radiograph expected")
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        return Rejection(STATUS_DATASET_MISMATCH,
                         f"photometric interpretation {photometric or 'missing'}; a grayscale radiograph "
                         "(MONOCHROME1 or MONOCHROME2) is expected")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return Rejection(STATUS_CANNOT_UNDERSTAND, "no transfer syntax in the file meta information")
    try:
        available = get_decoder(ts).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        return Rejection(STATUS_CANNOT_UNDERSTAND, f"no decoder installed for transfer syntax {UID(ts).name}")
    return None


def preprocess(ds: Dataset, image_size: int) -> np.ndarray:
    """Pixels of a valid radiograph as float32 (image_size, image_size) in [0, 1].

    Parameters
    ----------
    ds : pydicom Dataset
        An instance that passed :func:`check_dataset`.
    image_size : int
        The model's input side.
    """
    from PIL import Image

    from medfl.data.dicom import to_unit_gray

    arr = to_unit_gray(ds)
    img = Image.fromarray(arr.astype(np.float32), mode="F").resize((image_size, image_size),
                                                                   Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score, with where it came from."""

    model: object
    model_id: str
    model_round: int
    image_size: int
    source: pathlib.Path


class Scorer:
    """Scores radiographs with the newest model; reloads when a newer checkpoint appears.

    Parameters
    ----------
    model_file : Path, optional
        A safetensors checkpoint with ``model`` in its metadata (fixed model).
    models_dir : Path
        Where the agent keeps the global model of every round (used when model_file is None).
    """

    def __init__(self, *, model_file: pathlib.Path | None, models_dir: pathlib.Path):
        self.model_file = model_file
        self.models_dir = models_dir
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None

    def _newest(self) -> pathlib.Path | None:
        if self.model_file is not None:
            return self.model_file
        files = sorted(self.models_dir.glob("**/round-*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        return files[-1] if files else None

    def current(self) -> LoadedModel:
        """The model to use now (loading a newer checkpoint if there is one)."""
        from medfl.models import create_model
        from medfl.models.weights import load_checkpoint, load_state_arrays

        path = self._newest()
        if path is None:
            raise FileNotFoundError(f"no model to score with: no checkpoint under {self.models_dir} yet and no "
                                    "[pacs] model_file in agent.toml")
        with self._lock:
            if self._loaded is not None and self._loaded.source == path:
                return self._loaded
            arrays, meta = load_checkpoint(path)
            name = meta.get("model", "cnn")
            model = create_model(name, **json.loads(meta.get("model_args", "{}")))
            try:
                load_state_arrays(model, arrays)
            except ValueError as exc:
                raise StateError(f"checkpoint {path} does not fit model {name!r} with arguments "
                                 f"{meta.get('model_args', '{}')}: {exc}") from None
            model.eval()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            model_id = f"{name}:{meta['job_id']}:round-{meta.get('round', '0')}" if "job_id" in meta else \
                f"{name}:{path.stem}:{digest}"
            self._loaded = LoadedModel(model=model, model_id=model_id, model_round=int(meta.get("round", 0)),
                                       image_size=int(meta.get("image_size", 64)), source=path)
            log.info("scoring with model %s", model_id)
            return self._loaded

    def score(self, ds: Dataset) -> tuple[float, LoadedModel]:
        """Pneumonia probability of one radiograph, and the model that gave it."""
        loaded = self.current()
        return self.predict(loaded, [preprocess(ds, loaded.image_size)])[0], loaded

    @staticmethod
    def predict(loaded: LoadedModel, images: list[np.ndarray]) -> list[float]:
        """Pneumonia probabilities of preprocessed images (one forward pass for the batch).

        Parameters
        ----------
        loaded : LoadedModel
            The model (from :meth:`current`).
        images : list of ndarray
            Outputs of :func:`preprocess` at ``loaded.image_size``.
        """
        import torch

        x = torch.from_numpy(np.stack(images))[:, None]
        with torch.no_grad():
            p = torch.softmax(loaded.model(x), dim=1)[:, 1]  # type: ignore[operator]
        return [float(v) for v in p]
