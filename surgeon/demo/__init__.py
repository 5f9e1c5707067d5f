"""`make demo` (`python -m surgeon.demo`) and the offline SmolLM2-135M loader it uses."""
