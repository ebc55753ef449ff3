"""The background excess: empty-sky apertures measure the background noise the CCD equation
misses, against the simulator's truth (seeded).

A night whose sky carries a spatially correlated component (synthetic ``sky_pattern_rms``,
drawn anew in every frame, absent from the calibration frames) must show an excess equal to
the one its exact covariance predicts (``truth.background_excess_var``); a night with white
sky an excess consistent with zero, and then none is applied.
"""

import json

import numpy as np
import pytest

from tsphot import demo, noise, pipeline, synthetic

N_FRAMES = 50
N_SKY = 60
PATTERN_RMS = 14.0  # e- per pixel: an excess ~1.2x the white prediction at the 8 px aperture
# 50 frames and 60 apertures: the excess's own standard error is ~5 % of it (per aperture,
# the variance of 50 points scatters by sqrt(2/49) of prediction + excess; over 60 apertures,
# / sqrt(60)). 15 % is 3 of those errors; the truth's asymptotic formula for the variance of
# the annulus median adds about 1 % (checked against a Monte Carlo of measure_stars).
TOLERANCE = 0.15


def test_estimator_recovers_injected_variance_and_ignores_contaminated_apertures():
    rng = np.random.default_rng(1)
    n_f, n_a, pred, extra = 80, 50, 100.0, 60.0
    flux = rng.normal(0.0, np.sqrt(pred + extra), (n_f, n_a))
    flux[:, :3] += 40.0 * np.sin(np.linspace(0, 6, n_f))[:, None]  # a slow variable in three
    flux[7, 10] += 500.0  # a cosmic ray
    est = noise.background_excess(flux, np.full((n_f, n_a), pred), np.ones((n_f, n_a), bool))
    assert est["n_rejected"] >= 3
    assert abs(est["excess_var_e2"] - extra) < 3 * est["excess_err_e2"], est
    assert est["applied_var_e2"] == est["excess_var_e2"]
    white = rng.normal(0.0, np.sqrt(pred), (n_f, n_a))
    est = noise.background_excess(white, np.full((n_f, n_a), pred), np.ones((n_f, n_a), bool))
    assert abs(est["significance"]) < 3 and est["applied_var_e2"] == 0.0, est


@pytest.fixture(scope="module", params=["pattern", "white"])
def night(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    cfg = synthetic.SimConfig(
        n_frames=N_FRAMES,
        size=(384, 384),
        n_stars=80,
        seed=21,
        exptime=30.0,
        cadence=36.0,
        sky_pattern_rms=PATTERN_RMS if request.param == "pattern" else 0.0,
        sky_pattern_scale=2.0,
    )
    truth = synthetic.simulate_night(base / "night", cfg)
    settings = demo.settings_for(
        base / "night", base / "out", truth, quiet=True, executor="serial", sky_apertures=N_SKY
    )
    pipeline.run(settings)
    record = json.loads((base / "out" / "run.json").read_text())
    return request.param, truth, record


def test_measured_excess_matches_the_injected_one(night):
    kind, truth, record = night
    be = record["background_excess"]
    ann = tuple(record["apertures"]["annulus_px"])
    assert be["apertures"]["placed"] == N_SKY
    for rad, est in be["per_radius_px"].items():
        expected = synthetic.background_excess_var(truth, float(rad), ann)
        got, err = est["excess_var_e2"], est["excess_err_e2"]
        if kind == "pattern":
            assert abs(got - expected) <= TOLERANCE * expected, (rad, got, err, expected)
            assert est["applied_var_e2"] == got  # far above 3 errors
        else:
            # white sky: only the partial-pixel effect (a few % of the prediction, negative)
            assert abs(got - expected) < 3 * err, (rad, got, err, expected)
            assert est["applied_var_e2"] == 0.0, est
    chosen = record["apertures"]["chosen_radius_px"]
    applied = be["applied_var_e2_at_chosen_radius"]
    assert (applied > 0) == (kind == "pattern")
    # the term is on every star's budget
    for b in record["noise_budget"].values():
        assert (b["terms"]["background_excess"] > 0) == (kind == "pattern"), (chosen, b)
