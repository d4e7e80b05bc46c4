"""Differential privacy for medfl: per-sample clipping (DP-SGD building blocks).

References
----------
.. [1] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
"""

from medfl.privacy.clipping import SUPPORTED, GradSampleClipper

__all__ = ["SUPPORTED", "GradSampleClipper"]
