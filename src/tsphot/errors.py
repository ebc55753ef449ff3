"""User-facing errors: each names the file, keyword or region at fault and what to do."""

from __future__ import annotations


class TsphotError(Exception):
    """Base class of every error tsphot reports to the user without a traceback."""


class SettingsError(TsphotError):
    """Settings are unusable; raised before any work starts."""


class InputError(TsphotError):
    """An input file (exposure, calibration frame) cannot be used."""


class FrameError(TsphotError):
    """One exposure cannot be measured; the run goes on without it."""
