"""medfl: privacy-preserving federated learning for medical imaging (shared core)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
