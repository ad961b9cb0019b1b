"""printfarmd: the brain of a hobby 3D-print farm."""

__version__ = "0.1.0"
