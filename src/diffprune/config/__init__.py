"""Ground floor for configs: a strict pydantic base and one-line validation messages."""
from diffprune.config.base import ConfigError, Device, Precision, StrictModel, format_validation_error, validate_config

__all__ = ["ConfigError", "Device", "Precision", "StrictModel", "format_validation_error", "validate_config"]
