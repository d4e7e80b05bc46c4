"""Differential privacy for medfl: DP-SGD with per-sample clipping, secure noise, accounting, a ledger.

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
"""

from medfl.privacy.accountant import ACCOUNTANTS, Accountant, SgdRun, epsilon, noise_multiplier_for
from medfl.privacy.clipping import SUPPORTED, GradSampleClipper
from medfl.privacy.ledger import Ledger, LedgerEntry, dataset_key
from medfl.privacy.noise import gaussian, gaussian_for
from medfl.privacy.sampling import micro_batches, poisson_indices
from medfl.privacy.trainer import DPTrainer, StepStats
from medfl.privacy.validation import Problem, UnsupportedModel, fix, validate

__all__ = [
    "ACCOUNTANTS",
    "SUPPORTED",
    "Accountant",
    "DPTrainer",
    "GradSampleClipper",
    "Ledger",
    "LedgerEntry",
    "Problem",
    "SgdRun",
    "StepStats",
    "UnsupportedModel",
    "dataset_key",
    "epsilon",
    "fix",
    "gaussian",
    "gaussian_for",
    "micro_batches",
    "noise_multiplier_for",
    "poisson_indices",
    "validate",
]
