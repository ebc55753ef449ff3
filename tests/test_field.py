"""Field mode: variability indices and candidates on known arrays, and a simulated field
with known variables run end to end (every variable above 3× the per-point noise found, no
constant star flagged beyond the false-alarm rate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from tsphot import demo, field, pipeline, synthetic
from tsphot.synthetic.simulate import eclipsing_shape
from tsphot.synthetic.truth import expected_star_terms


def _noise(seed, n_frames, n_stars, sigma):
    rng = np.random.default_rng(seed)
    err = np.full((n_frames, n_stars), sigma)
    return rng.normal(0, sigma, (n_frames, n_stars)), err, np.ones((n_frames, n_stars), bool)


def test_indices_of_white_noise():
    dm, de, ok = _noise(1, 200, 400, 0.01)
    ind = field.variability_indices(dm, de, ok)
    assert np.median(ind["chi2_red"]) == pytest.approx(1.0, abs=0.03)
    assert np.median(ind["von_neumann"]) == pytest.approx(2.0, abs=0.05)
    assert np.median(ind["stetson_j"]) == pytest.approx(0.0, abs=0.03)
    assert np.median(ind["rms"] / ind["expected"]) == pytest.approx(1.0, abs=0.02)
    # the von Neumann z-score is standard normal for white noise
    assert np.std(ind["von_neumann_z"]) == pytest.approx(1.0, abs=0.1)


def test_false_alarm_rate_on_constant_stars():
    alpha = 0.01
    dm, de, ok = _noise(2, 80, 4000, 0.02)
    ind = field.variability_indices(dm, de, ok)
    mag = np.linspace(10, 15, 4000)
    cand, _, _ = field.candidates(ind, field.excess_scale(mag, ind["chi2_red"]), alpha)
    # expected 40 ± 6.3 (binomial); both tests together stay at or under alpha
    assert 20 <= cand.sum() <= 55, cand.sum()


def test_underestimated_errors_are_absorbed_by_the_field_scale():
    """Errors 1.5× too small for all stars: the running median puts the rate back near alpha."""
    alpha = 0.01
    dm, de, ok = _noise(3, 80, 3000, 0.02)
    de = de / 1.5
    ind = field.variability_indices(dm, de, ok)
    mag = np.linspace(10, 15, 3000)
    scale = field.excess_scale(mag, ind["chi2_red"])
    assert np.median(scale) == pytest.approx(2.25, rel=0.08)
    cand, _, _ = field.candidates(ind, scale, alpha)
    assert cand.sum() <= 60  # without the scale nearly every star would be flagged
    bad, _, _ = field.candidates(ind, np.ones_like(scale), alpha)
    assert bad.sum() > 2000


def test_variables_at_three_times_the_noise_are_found():
    n, sigma = 80, 0.01
    t = np.linspace(0, 1, n)
    rng = np.random.default_rng(4)
    curves = []
    for k in range(200):
        period = rng.uniform(0.25, 1.0)
        phase = rng.uniform(0, 1)
        ptp = 3 * sigma
        if k % 2:
            curves.append(0.5 * ptp * np.sin(2 * np.pi * (t / period + phase)))
        else:
            curves.append(ptp * eclipsing_shape(t / period + phase))
    signal = np.array(curves).T
    dm = signal + rng.normal(0, sigma, signal.shape)
    de = np.full(dm.shape, sigma)
    ok = np.ones(dm.shape, bool)
    ind = field.variability_indices(dm, de, ok)
    cand, _, _ = field.candidates(ind, np.ones(dm.shape[1]), 1e-3)
    assert cand.mean() >= 0.9, cand.mean()  # at exactly the threshold amplitude, 80 points


def test_outliers_flagged_but_not_eclipses():
    dm, de, ok = _noise(5, 100, 3, 0.01)
    dm[40, 0] += 0.2  # a cosmic ray
    dm[:, 1] += 0.1 * np.clip(1 - np.abs(np.arange(100) - 50) / 10, 0, 1)  # an eclipse
    out = field.flag_outliers(dm, de, ok, 5.0)
    assert out[40, 0] and out[:, 0].sum() == 1
    assert not out[:, 1].any()


def test_noise_model_line_follows_the_predicted_terms():
    mag = np.linspace(9, 16, 200)
    flux = 10 ** (-0.4 * (mag - 25)) * 60
    expected = np.sqrt(1 / flux + 4e6 / flux**2 + 1e-6) * 1.0857
    grid, pred = field.noise_model_line(mag, expected, 60.0)
    assert np.interp(mag, grid, pred) == pytest.approx(expected, rel=0.02)


# ------------------------------------------------------------------ end to end, simulated field


def _row_truth(truth, f, radius):
    """Each measured star's true variability (flux-weighted over truth stars within 1.5 px)."""
    tx, ty = np.asarray(truth.stars["x"]), np.asarray(truth.stars["y"])
    flux = np.asarray(truth.stars["flux_e_per_s"])
    astro = np.asarray(truth.frames["astro_factor"]).reshape(truth.n_frames, -1)
    out = []
    for row in f:
        members = np.flatnonzero(np.hypot(tx - row["x"], ty - row["y"]) < 1.5)
        if row["role"] == "target" or members.size == 0:
            continue
        factor = (astro[:, members] * flux[members]).sum(1) / flux[members].sum()
        brightest = int(members[np.argmax(flux[members])])
        terms = expected_star_terms(truth, brightest, radius, 500)
        sigma = float(np.median(terms["total"] / terms["flux_ap"]))
        ptp = float(factor.max() - factor.min())
        out.append((row["name"], ptp / sigma, bool(row["candidate"]), "blended" in row["flags"]))
    return out


@pytest.fixture(scope="module")
def field_night(tmp_path_factory):
    base = tmp_path_factory.mktemp("field")
    cfg = synthetic.SimConfig(
        n_frames=60,
        size=(320, 320),
        n_stars=100,
        mag_range=(9.0, 15.0),
        n_field_variables=14,
        field_var_ptp=(0.02, 0.3),
        field_var_mag=(9.5, 14.5),
        seed=4,
    )
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
    settings = demo.settings_for(base / "night", base / "out", truth, quiet=True)
    settings = settings.model_copy(update={"all_stars": True})
    summary = pipeline.run(settings)
    return truth, base / "out", summary


def test_field_products_written(field_night):
    _, out, summary = field_night
    for name in ("field.ecsv", "rms_mag.png"):
        assert (out / name).is_file()
    lc_path = out / "field_lightcurves.parquet"
    if lc_path.exists():
        pq = pytest.importorskip("pyarrow.parquet")
        lc = Table(pq.read_table(lc_path).to_pydict())
    else:
        lc = Table.read(out / "field_lightcurves.ecsv")
    f = Table.read(out / "field.ecsv")
    assert len(lc) == len(f) * 60  # long format: every star in every frame, status says why
    assert set(lc.colnames) >= {"star", "frame", "BJD_TDB", "rel_flux", "rel_flux_err", "status"}
    assert {"ra", "dec", "chi2_red", "von_neumann", "stetson_j", "candidate"} <= set(f.colnames)
    record = json.loads((out / "run.json").read_text())
    assert record["field"]["n_candidates"] == int(f["candidate"].sum())
    assert summary["field"]["stars"] == len(f)
    assert all("ra" in c for c in summary["field"]["candidates"])


def test_every_variable_above_three_sigma_found_and_constants_quiet(field_night):
    truth, out, _ = field_night
    f = Table.read(out / "field.ecsv")
    radius = json.loads((out / "run.json").read_text())["apertures"]["chosen_radius_px"]
    rows = _row_truth(truth, f, radius)
    strong = [r for r in rows if r[1] >= 3 and not r[3]]
    constant = [r for r in rows if r[1] == 0 and not r[3]]
    assert len(strong) >= 4, rows  # the test means something only with several variables
    missed = [r for r in strong if not r[2]]
    assert not missed, missed
    false = [r for r in constant if r[2]]
    # expected 0.001 × ~30 = 0.03 false alarms; one is already a 1-in-30 event
    assert len(false) <= 1, false
    assert len(constant) >= 20


def test_rms_follows_the_noise_model_for_constant_stars(field_night):
    _, out, _ = field_night
    f = Table.read(out / "field.ecsv")
    const = (~f["candidate"]) & (f["role"] == "field") & (f["n_points"] > 40)
    ratio = np.asarray(f["rms"][const] / f["expected_rms"][const])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.12), ratio


def test_shared_red_noise_is_calibrated_out_of_the_von_neumann_test():
    """Every star shares a slow trend of its own noise size: without the field's own
    calibration the von Neumann test would flag most of them."""
    alpha = 0.01
    n, n_s = 100, 2000
    rng = np.random.default_rng(8)
    t = np.linspace(0, 1, n)
    phase = rng.uniform(0, 2 * np.pi, n_s)  # the same size of trend, a different phase each
    trend = 0.006 * np.sin(2 * np.pi * t[:, None] + phase[None, :])
    dm = trend + rng.normal(0, 0.01, (n, n_s))
    de = np.full(dm.shape, 0.01)
    ind = field.variability_indices(dm, de, np.ones(dm.shape, bool))
    mag = np.linspace(10, 15, n_s)
    scale = field.excess_scale(mag, ind["chi2_red"])
    centre, spread = field.von_neumann_calibration(mag, ind["von_neumann_z"])
    assert np.median(centre) < -0.5 and np.median(spread) > 1.0
    cand, _, _ = field.candidates(ind, scale, alpha, centre, spread)
    raw, _, _ = field.candidates(ind, scale, alpha)
    assert cand.sum() < 0.05 * n_s < raw.sum()


def test_field_photometry_agrees_with_measure_stars(tmp_path):
    """The cheap field photometry against the reference path on a simulated frame."""
    from astropy.io import fits

    from tsphot import detect, measure

    cfg = synthetic.SimConfig(n_frames=1, size=(256, 256), n_stars=60, seed=5, clouds=False)
    synthetic.simulate_night(tmp_path / "n", cfg)
    data = fits.getdata(tmp_path / "n" / "raw" / "sci_0000.fits").astype(float) - cfg.bias_level
    src = detect.find_sources(data, 5.0)
    ap = measure.Apertures((4.0, 6.0), (12.0, 20.0))
    ref = measure.measure_stars(data, src.x, src.y, ap, cfg.gain, saturation=65000)
    got = field.photometry(data, src.x, src.y, ap, cfg.gain, 65000)
    ok = np.isfinite(ref["flux"][:, 1]) & np.isfinite(got["flux"][:, 1])
    assert ok.sum() > 20
    # the sky: same estimator on half the ring's pixels, so within its own error of the median
    dsky = (got["sky"] - ref["sky"])[ok]
    sky_err = ref["sky_std"][ok] * np.sqrt(np.pi / 2 / got["n_sky"][ok])
    assert np.median(np.abs(dsky / sky_err)) < 1.5
    assert np.abs(dsky / sky_err).max() < 6
    # fluxes within their errors; errors a little larger (the sky median of half the pixels)
    z = ((got["flux"] - ref["flux"]) / ref["flux_err"])[ok]
    assert np.abs(z).max() < 3
    ratio = np.median(got["flux_err"][ok] / ref["flux_err"][ok])
    assert 1.0 <= ratio < 1.12
    assert np.array_equal(got["peak"], ref["peak"], equal_nan=True)


def test_sky_ring_leaves_out_a_bright_neighbour():
    """A star 6 mag brighter sits in the ring: unmasked, its wings lift the sky by far more
    than the sky's own error; masked as measure.annulus_stats masks, the sky is the truth."""
    from tsphot import measure

    rng = np.random.default_rng(12)
    ny, nx, sky, noise = 120, 120, 200.0, 5.0
    img = rng.normal(sky, noise, (ny, nx))
    yy, xx = np.mgrid[:ny, :nx]
    bx, by, fwhm, beta = 80.0, 60.0, 4.0, 3.0
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    peak = 60000.0
    img += peak * (1 + ((xx - bx) ** 2 + (yy - by) ** 2) / alpha**2) ** -beta
    x, y = np.array([60.0]), np.array([60.0])  # the bright star 20 px away: inside the ring
    plain, _, n_plain = field.sky_ring(img, x, y, 15.0, 25.0)
    radius = measure.mask_radius_for(np.array([peak]), noise, fwhm)
    masked, masked_std, n_masked = field.sky_ring(
        img, x, y, 15.0, 25.0, mask_xy=np.array([[bx, by]]), mask_radius=radius
    )
    err = noise * np.sqrt(np.pi / 2 / n_masked[0])
    assert n_masked[0] < n_plain[0]
    assert plain[0] - sky > 5 * err  # the neighbour biases the unmasked sky
    assert abs(masked[0] - sky) < 4 * err
    assert masked_std[0] == pytest.approx(noise, rel=0.15)
