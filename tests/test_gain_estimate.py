"""A night whose headers carry no gain: the gain is estimated from the stars, and the error
bars that follow from it match the achieved scatter (against the simulator's truth)."""

import json

import numpy as np
import pytest
from astropy.io import fits

from tsphot import demo, pipeline, synthetic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("nogain")
    # a dark sky, so that the stars are photon-limited and their scatter measures the gain
    cfg = synthetic.SimConfig(
        n_frames=150, size=(512, 512), n_stars=160, seed=11, gain=2.3, sky_zenith=5.0
    )
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
    for path in sorted((base / "night" / "raw").glob("sci_*.fits")):
        with fits.open(path, mode="update") as hdul:
            for key in ("GAIN", "EGAIN"):
                hdul[0].header.remove(key, ignore_missing=True)
    settings = demo.settings_for(base / "night", base / "out", truth, quiet=True)
    settings.gain = None
    pipeline.run(settings)
    record = json.loads((base / "out" / "run.json").read_text())
    return cfg, truth, record, demo.compare_with_truth(truth, base / "out")


def test_gain_estimated_near_truth(run):
    cfg, _, record, _ = run
    g = record["gain"]
    assert g["source"] == "estimated"
    assert g["n_stars"] >= 5
    # within 3 sigma of its own error bar, and within 15 % of the simulated 2.3 e-/ADU
    assert abs(g["value"] - cfg.gain) < 3 * g["error"], g
    assert g["value"] == pytest.approx(cfg.gain, rel=0.15)
    assert record["gain_e_per_adu"] == pytest.approx(g["value"])
    assert any("estimated" in a and "photon transfer" in a for a in record["assumed"])


def test_errors_from_estimated_gain_match_scatter(run):
    *_, c = run
    # reported errors follow the noise model at the estimated gain: within 15 % of the achieved
    # scatter (the true transit divided out), and that scatter within 10 % of the prediction
    assert c["median_error"] / c["achieved_rms"] == pytest.approx(1.0, abs=0.15)
    assert c["achieved_rms"] / c["predicted_rms"] == pytest.approx(1.0, abs=0.10)
    assert np.isfinite(c["depth"])
