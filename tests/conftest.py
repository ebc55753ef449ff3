"""Shared fixtures: one small simulated night reduced once, with every export asked for."""

from pathlib import Path

import pytest

from tsphot import demo, pipeline, synthetic
from tsphot.settings import EXPORT_FORMATS

OBSCODE = "TST01"  # the AAVSO's own example observer code

# Modules that leave threads running for the rest of the process: schemathesis keeps one
# event-loop thread for its ASGI calls until exit, dask.distributed its IO loop and offload
# pool. With another thread alive, the process executor starts its workers by forkserver, not
# fork (forking a threaded process can deadlock), so each run's workers import what they need
# anew, and the figures are drawn one at a time. So these modules run last, in this order:
# test_executors forks its own process pools before dask leaves its threads.
LEAVE_THREADS = ("tests/test_executors.py", "tests/api/test_api_schema.py")


def pytest_collection_modifyitems(config, items):
    """Move the modules that leave threads behind to the end of the session, in that order."""
    late = [it for it in items if it.nodeid.split("::")[0] in LEAVE_THREADS]
    if late:
        ids = {id(it) for it in late}
        late.sort(key=lambda it: LEAVE_THREADS.index(it.nodeid.split("::")[0]))  # stable
        items[:] = [it for it in items if id(it) not in ids] + late


@pytest.fixture(scope="session")
def small_night(tmp_path_factory):
    """A 30-frame, 256x256 px night with a transit, a check star and known truth."""
    base = tmp_path_factory.mktemp("small")
    cfg = synthetic.SimConfig(
        n_frames=30, size=(256, 256), n_stars=60, seed=7, exptime=120.0, cadence=360.0
    )
    # two forked processes write the frames: the same files as one (test_synthetic), sooner
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
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
