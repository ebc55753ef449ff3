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
from astropy.table import Table

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
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
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


def test_sky_apertures_lie_on_empty_sky_and_are_kept_apart(small_night, small_run):
    """Every empty-sky aperture is clear of the simulated stars the reference shows (their
    light in the aperture, from the true positions and fluxes, below 5 sigma of the
    aperture's background noise, whether the stars are detected or not), its
    series is stored, and it is no object of the run (no light curve, no comparison)."""
    _, truth = small_night
    out, _ = small_run
    record = json.loads((out / "run.json").read_text())
    sky = Table.read(out / "sky_apertures.ecsv")
    first = sky[sky["frame"] == 0]
    n = record["background_excess"]["apertures"]["placed"]
    assert n == len(first) > 10
    assert len(sky) == n * truth.n_frames
    r_ap = max(record["apertures"]["radii_px"])
    cfg = truth.config
    f0 = truth.frames[truth.frames["frame"] == 0]  # the reference frame: the first
    sx, sy = np.asarray(f0["x"], float), np.asarray(f0["y"], float)
    flux = np.asarray(f0["flux_e"], float)
    alpha = synthetic.moffat_alpha(float(f0["fwhm"][0]), cfg.moffat_beta)
    beta = cfg.moffat_beta
    # points spread over the aperture: each true star's light inside it, by its Moffat profile
    g = np.arange(-r_ap, r_ap + 0.01, 0.25)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= r_ap**2
    gx, gy = gx[inside], gy[inside]
    norm = (beta - 1) / (np.pi * alpha**2) * 0.25**2
    rad = f"{r_ap:g}"
    for x, y, sig in zip(first["x_ref"], first["y_ref"], first[f"predicted_err_r{rad}"],
                           strict=True):  # fmt: skip
        near = np.hypot(sx - x, sy - y) < r_ap + 10 * float(f0["fwhm"][0])
        r2 = (x + gx[None, :] - sx[near, None]) ** 2 + (y + gy[None, :] - sy[near, None]) ** 2
        light = flux[near] * norm * np.sum((1 + r2 / alpha**2) ** -beta, axis=1)
        # no star the reference frame shows clearly, detected or not: its light in the
        # aperture below 5 sigma of the aperture's background noise on that frame, the run's
        # detection limit (a fainter star is constant: only the seeing's few-% change of its
        # enclosed light reaches the series, a small part of one aperture's variance)
        assert light.sum() < 5 * float(sig), (x, y, light.max(), sig)

    # no object of the run (target, comparison, check) sits on an empty-sky aperture
    res = Table.read(out / "results.ecsv")
    res0 = res[res["frame"] == 0]
    d = np.hypot(
        np.asarray(res0["x"], float)[:, None] - np.asarray(first["x_ref"], float)[None, :],
        np.asarray(res0["y"], float)[:, None] - np.asarray(first["y_ref"], float)[None, :],
    )
    assert d.min() > 2 * r_ap, d.min()
    assert len(set(res0["object"])) == len(res0)


def test_sky_apertures_off(small_night, tmp_path):
    base, truth = small_night
    settings = demo.settings_for(
        base / "night", tmp_path / "run", truth, quiet=True, executor="serial", sky_apertures=0
    )
    pipeline.run(settings)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["background_excess"]["applied"] is False
    assert record["background_excess"]["series"] is None
    assert not (tmp_path / "run" / "sky_apertures.ecsv").exists()
    assert all(b["terms"]["background_excess"] == 0 for b in record["noise_budget"].values())
