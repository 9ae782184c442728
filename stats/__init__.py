"""Modality statistics, the geometry report and conformity scoring (paper §4–7)."""

__all__: list[str] = []
