"""Passes: one file per pass, each a frozen dataclass registered by name here.

A pass reads and writes a `SurgeryState`: it decides (scores, which indices each group
keeps and in what order, scale factors) and never touches the parent's tensors; the
emitters build the child from those decisions.
"""

from .depth import Depth
from .permute import Permute
from .rescale import Rescale
from .score import Score
from .slice import Slice
from .state import SurgeryState

__all__ = ["PASSES", "Depth", "Permute", "Rescale", "Score", "Slice", "SurgeryState"]

PASSES = {p.name: p for p in (Score, Depth, Permute, Slice, Rescale)}
