"""The package version, kept where every stage may read it."""

__version__ = "0.1.0"
