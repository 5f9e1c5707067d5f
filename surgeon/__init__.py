"""surgeon: initialize a small transformer from a larger pretrained one (weight subcloning)."""

from .errors import InvariantError, PlanError, SurgeonError, TraceError, UnsupportedOpError
from .report import Report, inspect

__all__ = [
    "inspect",
    "Report",
    "SurgeonError",
    "PlanError",
    "UnsupportedOpError",
    "InvariantError",
    "TraceError",
]
__version__ = "0.1.0"
