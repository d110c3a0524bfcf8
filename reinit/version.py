"""The package version, in a module of its own so that no module below the facade imports
the facade (`reinit/__init__.py`) to learn it."""

__version__ = "0.1.0"
