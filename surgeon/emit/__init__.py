"""Emitters: rewritten graph -> Hugging Face model | fx GraphModule | ONNX file."""

__all__: list[str] = []
