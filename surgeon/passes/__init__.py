"""Passes: one file per pass, each a frozen dataclass registered by name here."""

__all__: list[str] = []
