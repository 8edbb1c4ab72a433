"""lbsplit: staged (canary) releases on plain nginx."""

__version__ = "0.1.0"
