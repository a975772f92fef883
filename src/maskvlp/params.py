"""Reading params.yaml into a checked :class:`~maskvlp.config.Config` (moving here from config.py)."""

from maskvlp.config import load_config, resolve_derived, validate

__all__ = ["load_config", "resolve_derived", "validate"]
