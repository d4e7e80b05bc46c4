"""Scoring PACS scans by encrypted inference (``[pacs] scoring = "encrypted"``).

For a hospital that does not hold the model: each burst of scans is scored in one session with
the model server of agent.toml's ``[inference]`` table (:mod:`agent.infer`), so the scans never
leave the hospital in the clear and the model never reaches it. The SR says that the result
came from encrypted inference.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
"""

from __future__ import annotations

import pathlib

import numpy as np
from pydicom.dataset import Dataset

from agent.config import AgentConfig
from agent.pacs.scoring import LoadedModel, preprocess
from agent.policy import check_inference

__all__ = ["EncryptedScorer"]


class EncryptedScorer:
    """The :class:`~agent.pacs.scoring.Scorer` interface backed by encrypted inference.

    Parameters
    ----------
    cfg : AgentConfig
        With ``[inference]`` allowing encrypted inference and naming the model server.
    """

    encrypted = True

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg

    def current(self) -> LoadedModel:
        """The remote model as the SR names it (after checking the local policy allows it)."""
        from medfl.wire import fingerprint, read_public_key

        inf = self.cfg.inference
        check_inference(self.cfg.policy, inf, inf.model)
        key_file = inf.model_server_key_file or self.cfg.coordinator.public_key_file
        server = fingerprint(read_public_key(key_file))[7:19] if key_file is not None else "unpinned"
        return LoadedModel(model=None, model_id=f"{inf.model}:encrypted:{server}", model_round=0,
                           image_size=inf.image_size, source=pathlib.Path(str(key_file)))

    def predict(self, loaded: LoadedModel, images: list[np.ndarray]) -> list[float]:
        """Scores of preprocessed (H, W) images, one encrypted-inference session for the batch."""
        from agent.infer import encrypted_scores

        return encrypted_scores(self.cfg, [np.asarray(i, np.float32)[None] for i in images])

    def score(self, ds: Dataset) -> tuple[float, LoadedModel]:
        """Score one radiograph."""
        loaded = self.current()
        return self.predict(loaded, [preprocess(ds, loaded.image_size)])[0], loaded
