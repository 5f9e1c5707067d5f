"""Emitters: build the child from the passes' decisions. Each returns what it builds and
changes no decision:

- `emit_graph(state)` -> a trainable `torch.fx.GraphModule` (any parent in memory);
- `emit_hf(parent, config, graph, state)` -> the parent's Hugging Face class with the
  child's config, loaded from the graph child and checked to compute what it computes;
- `emit_shards(cut, folder)` -> a Hugging Face folder written block by block from a
  streamed parent's files (returns the number of values written);
- `emit_onnx(model, inputs, folder)` -> `model.onnx`, checked with onnxruntime (returns the
  largest relative difference);
- `emit_decoder(model, folder)` -> `model.onnx` of a causal LM with a KV cache, checked
  against PyTorch's logits and transformers' greedy generation (returns the numbers).
"""

from .graph import emit_graph
from .hf import emit_hf, is_hf_model

__all__ = ["emit_graph", "emit_hf", "is_hf_model"]
