"""surgeon: initialize a small transformer from a larger pretrained one (weight subcloning)."""

import warnings

from .analysis import register_rule, unregister_rule
from .api import apply, subclone
from .errors import InvariantError, PlanError, SurgeonError, TraceError, UnsupportedOpError
from .pipeline import Parent, prepare
from .plan import Plan, load_plan
from .report import Report, inspect

__all__ = [
    "apply",
    "subclone",
    "prepare",
    "Parent",
    "inspect",
    "register_rule",
    "unregister_rule",
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

# torch's notice of its own deprecated API, raised inside copy.deepcopy of an exported
# graph's tree specs: nothing the user wrote, nothing they can change
warnings.filterwarnings(
    "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
)
