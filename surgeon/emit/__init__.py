"""Emitters: the passes' decisions -> fx GraphModule | Hugging Face model."""

from .graph import emit_graph
from .hf import check_config, emit_hf, is_hf_model

__all__ = ["emit_graph", "emit_hf", "check_config", "is_hf_model"]
