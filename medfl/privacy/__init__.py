"""Differential privacy for medfl: per-sample clipping, secure noise, Poisson sampling, validation.

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
"""

from medfl.privacy.clipping import SUPPORTED, GradSampleClipper
from medfl.privacy.noise import gaussian
from medfl.privacy.sampling import micro_batches, poisson_indices
from medfl.privacy.validation import Problem, UnsupportedModel, fix, validate

__all__ = [
    "SUPPORTED",
    "GradSampleClipper",
    "Problem",
    "UnsupportedModel",
    "fix",
    "gaussian",
    "micro_batches",
    "poisson_indices",
    "validate",
]
