"""weightshare: compress trained PyTorch networks by weight sharing."""

__version__ = "0.1.0"
