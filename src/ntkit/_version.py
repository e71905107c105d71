"""The version of ntkit (a leaf module: :mod:`ntkit.cli` reads it without importing the package above it)."""

__version__ = "0.1.0"
