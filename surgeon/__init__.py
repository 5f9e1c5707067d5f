"""surgeon: initialize a small transformer from a larger pretrained one (weight subcloning)."""

from .errors import InvariantError, PlanError, SurgeonError, TraceError, UnsupportedOpError

__all__ = ["SurgeonError", "PlanError", "UnsupportedOpError", "InvariantError", "TraceError"]
__version__ = "0.1.0"
