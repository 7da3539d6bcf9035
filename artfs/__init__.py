"""artfs: versioned ML artifacts in a content-addressed registry, readable as ordinary files."""

__version__ = "0.1.0"
