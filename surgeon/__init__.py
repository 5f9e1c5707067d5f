"""surgeon: initialize a small transformer from a larger pretrained one (weight subcloning)."""

from .apply import apply
from .errors import InvariantError, PlanError, SurgeonError, TraceError, UnsupportedOpError
from .plan import Plan, load_plan
from .report import Report, inspect

__all__ = [
    "apply",
    "inspect",
    "load_plan",
    "Plan",
    "Report",
    "SurgeonError",
    "PlanError",
    "UnsupportedOpError",
    "InvariantError",
    "TraceError",
]
__version__ = "0.1.0"
