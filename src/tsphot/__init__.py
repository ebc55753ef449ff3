"""tsphot: time-series differential photometry."""

__version__ = "0.1.0"
