"""The brulee edge agent: HTTP gateway, placement, workers, interpreter cache, policies."""

__version__ = "0.1.0"
