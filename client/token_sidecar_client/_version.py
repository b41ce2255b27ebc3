"""The client's version: always the daemon's (``sidecar/_version.py``); a test holds them equal."""

__version__ = "0.1.0"
