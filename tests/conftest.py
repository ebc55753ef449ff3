"""Shared fixtures: one small simulated night reduced once, with every export asked for."""

from pathlib import Path

import pytest

from tsphot import demo, pipeline, synthetic
from tsphot.settings import EXPORT_FORMATS

OBSCODE = "TST01"  # the AAVSO's own example observer code


@pytest.fixture(scope="session")
def small_night(tmp_path_factory):
    """A 30-frame, 256x256 px night with a transit, a check star and known truth."""
    base = tmp_path_factory.mktemp("small")
    cfg = synthetic.SimConfig(
        n_frames=30, size=(256, 256), n_stars=60, seed=7, exptime=120.0, cadence=360.0
    )
    truth = synthetic.simulate_night(base / "night", cfg)
    return base, truth


@pytest.fixture(scope="session")
def small_run(small_night) -> tuple[Path, dict]:
    """The small night reduced (serial executor) with every export format."""
    base, truth = small_night
    settings = demo.settings_for(
        base / "night",
        base / "run",
        truth,
        quiet=True,
        executor="serial",
        exports=list(EXPORT_FORMATS),
        observer_code=OBSCODE,
    )
    summary = pipeline.run(settings)
    return base / "run", summary
