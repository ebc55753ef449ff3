"""Registration in a whole run: a simulated night with large drift, rotation, a meridian flip, a
frame under thick cloud and a frame of another field; every frame gets a status and reason."""

import shutil

import numpy as np
import pytest
from astropy.table import Table

from tsphot import pipeline, synthetic
from tsphot.settings import Settings, load_toml

N = 16
CLOUD, FOREIGN = 5, 11


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("registration")
    cfg = synthetic.SimConfig(
        n_frames=N,
        size=(256, 256),
        n_stars=70,
        seed=21,
        drift=(40.0, -30.0),  # large for a 256 px frame
        rotation_deg=4.0,
        meridian_flip=True,  # 180 degrees from frame 8 on
        flip_offset=(6.0, -5.0),
        cloud_frame=CLOUD,  # transparency 0.02: no star left to register on
    )
    truth = synthetic.simulate_night(base / "night", cfg)
    # the other field observed at the very time of frame FOREIGN
    start = truth.exposures["date_obs"][FOREIGN]
    other = synthetic.simulate_night(
        base / "other",
        synthetic.SimConfig(n_frames=1, size=(256, 256), n_stars=70, seed=99, start_utc=start),
    )
    # frame FOREIGN is replaced by an exposure of another field (the telescope went elsewhere)
    shutil.copy(other.science_files()[0], truth.science_files()[FOREIGN])
    data = load_toml(base / "night" / "tsphot.toml")
    settings = Settings(**{**data, "out": str(base / "out"), "quiet": True, "transit": None})
    pipeline.run(settings)
    return truth, base / "out"


def test_every_frame_has_a_status_and_reason(run):
    _, out = run
    res = Table.read(out / "results.ecsv")
    t1 = res[res["object"] == "T1"]
    t1.sort("frame")
    assert len(t1) == N
    status = list(t1["status"])
    assert status[FOREIGN] == "unregistered"
    assert (
        "could arise by chance" in t1["reason"][FOREIGN]
        or "no star pattern" in (t1["reason"][FOREIGN])
    )
    assert status[CLOUD] in ("unregistered", "ok")  # too few stars, or the brightest few
    if status[CLOUD] == "unregistered":
        assert "cannot register" in t1["reason"][CLOUD]
    others = [i for i in range(N) if i not in (CLOUD, FOREIGN)]
    assert all(status[i] == "ok" for i in others), status


def test_positions_follow_drift_rotation_and_flip(run):
    """T1 is measured where the truth puts it, before and after the flip (within 0.3 px)."""
    truth, out = run
    rows = truth.star_frames(truth.target)
    res = Table.read(out / "results.ecsv")
    t1 = res[res["object"] == "T1"]
    t1.sort("frame")
    ok = np.asarray(t1["status"]) == "ok"
    err = np.hypot(np.asarray(t1["x"]) - rows["x"], np.asarray(t1["y"]) - rows["y"])
    assert ok[: N // 2].any() and ok[N // 2 :].any()
    assert np.all(err[ok] < 0.3), err[ok]
    assert np.asarray(truth.exposures["flipped"])[ok].any()
