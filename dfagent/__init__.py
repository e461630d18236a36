"""dfagent: a per-node agent that serves container image blobs from cache, peers or origin."""

__version__ = "0.1.0"
__all__ = ["__version__"]
