"""Noise model against analytic values: CCD equation, Young/Osborn scintillation, magnitudes."""

from __future__ import annotations

import numpy as np
import pytest

from tsphot.noise import (
    MAG_PER_FRAC,
    ccd_sigma,
    ccd_terms,
    gain_from_scatter,
    mag_err_from_flux,
    mag_from_flux,
    rescale_gain,
    robust_white_var,
    scintillation_sigma,
    total_sigma,
)


def test_photon_limited_star_is_sqrt_flux() -> None:
    flux = np.array([1.0, 100.0, 1e4, 1e6])
    sigma = ccd_sigma(flux, n_pix=50, sky_e_per_pix=0, dark_e_per_pix=0, read_noise_e=0, gain=0)
    np.testing.assert_allclose(sigma, np.sqrt(flux), rtol=1e-14)


def test_ccd_equation_worked_example() -> None:
    # F = 10000 e-, 50 px, sky 100 e-/px, dark 5 e-/px, RN 10 e-, gain 2 e-/ADU, 200 sky px:
    # sigma² = 10000 + 50 (1 + 50/200) (100 + 5 + 100 + 4/12) = 22833.33 e²  ->  151.107 e-
    kw = dict(n_pix=50, sky_e_per_pix=100, dark_e_per_pix=5, read_noise_e=10, gain=2)
    sigma = ccd_sigma(1e4, **kw, n_sky=200)
    assert sigma == pytest.approx(151.10702608857517, rel=1e-12)
    # Without the sky-estimate term: 10000 + 50 * 205.333 = 20266.67 e²
    assert ccd_sigma(1e4, **kw) == pytest.approx(np.sqrt(20266.666666666668), rel=1e-12)


def test_terms_add_in_quadrature_and_have_their_own_values() -> None:
    rng = np.random.default_rng(1)
    flux = rng.uniform(1e2, 1e6, 20)
    kw = dict(n_pix=30.0, sky_e_per_pix=40.0, dark_e_per_pix=2.0, read_noise_e=7.0, gain=1.5)
    terms = ccd_terms(flux, **kw, n_sky=300)
    assert set(terms) == {"photon", "sky", "dark", "read", "digitisation"}
    total = np.sqrt(sum(t**2 for t in terms.values()))
    np.testing.assert_allclose(total, ccd_sigma(flux, **kw, n_sky=300), rtol=1e-14)
    k = 30 * (1 + 30 / 300)
    np.testing.assert_allclose(terms["photon"], np.sqrt(flux), rtol=1e-14)
    np.testing.assert_allclose(terms["sky"], np.sqrt(k * 40), rtol=1e-14)
    np.testing.assert_allclose(terms["dark"], np.sqrt(k * 2), rtol=1e-14)
    np.testing.assert_allclose(terms["read"], np.sqrt(k) * 7, rtol=1e-14)
    np.testing.assert_allclose(terms["digitisation"], np.sqrt(k * 1.5**2 / 12), rtol=1e-14)
    assert all(t.shape == flux.shape for t in terms.values())


def test_negative_flux_has_no_photon_noise_and_nan_propagates() -> None:
    s = ccd_sigma([-50.0, np.nan], 10, 4.0, 0.0, 0.0, 0.0)
    assert s[0] == pytest.approx(np.sqrt(40.0))
    assert np.isnan(s[1])


def test_ccd_rejects_negative_inputs() -> None:
    with pytest.raises(ValueError, match="read_noise_e"):
        ccd_sigma(100.0, 10, 1.0, 0.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="n_sky"):
        ccd_sigma(100.0, 10, 1.0, 0.0, 1.0, 1.0, n_sky=0)


def test_young_worked_example() -> None:
    # D = 40 cm, X = 1, h = 0, t = 60 s: 0.09 * 40^(-2/3) / sqrt(120) = 7.0244e-4
    young = scintillation_sigma(0.40, 1.0, 60.0, 0.0, osborn_factor=1.0)
    assert young == pytest.approx(7.024442990895587e-4, rel=1e-12)
    assert scintillation_sigma(0.40, 1.0, 60.0, 0.0) == pytest.approx(1.5 * 7.024442990895587e-4)


def test_scintillation_scaling_laws() -> None:
    base = scintillation_sigma(0.4, 1.3, 30.0, 500.0)
    assert scintillation_sigma(0.8, 1.3, 30.0, 500.0) / base == pytest.approx(2 ** (-2 / 3))
    assert scintillation_sigma(0.4, 2.6, 30.0, 500.0) / base == pytest.approx(2**1.75)
    assert scintillation_sigma(0.4, 1.3, 120.0, 500.0) / base == pytest.approx(0.5)
    assert scintillation_sigma(0.4, 1.3, 30.0, 8500.0) / base == pytest.approx(np.exp(-1.0))
    arr = scintillation_sigma(0.4, np.array([1.0, 1.5, 2.0]), 30.0, 0.0)
    assert arr.shape == (3,) and np.all(np.diff(arr) > 0)


def test_scintillation_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="airmass"):
        scintillation_sigma(0.4, 0.5, 30.0, 0.0)
    with pytest.raises(ValueError, match="exptime_s"):
        scintillation_sigma(0.4, 1.0, 0.0, 0.0)


def test_total_sigma_adds_scintillation_in_quadrature() -> None:
    assert total_sigma(1e6, 1e3, 1e-3) == pytest.approx(np.sqrt(2) * 1e3)


def test_magnitudes() -> None:
    assert mag_from_flux(1e4, 10.0) == pytest.approx(25.0 - 7.5)
    assert mag_from_flux(1e4, 10.0, zero_point=20.0) == pytest.approx(12.5)
    m = mag_from_flux([100.0, 0.0, -5.0], 1.0)
    assert m[0] == pytest.approx(20.0) and np.isnan(m[1]) and np.isnan(m[2])
    assert MAG_PER_FRAC == pytest.approx(1.0857, abs=1e-4)
    assert mag_err_from_flux(1e4, 100.0) == pytest.approx(1.0857362 * 0.01, rel=1e-6)
    # The linear error agrees with the exact magnitude change for a small flux step.
    f, s = 2.5e5, 500.0
    exact = (mag_from_flux(f - s, 1.0) - mag_from_flux(f + s, 1.0)) / 2
    assert mag_err_from_flux(f, s) == pytest.approx(exact, rel=1e-5)
    assert np.isnan(mag_err_from_flux(0.0, 1.0))


def test_robust_white_var_ignores_trends_and_outliers() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    x = rng.normal(0.0, 2e-3, n) + np.linspace(0.0, 0.05, n)  # white noise on a slow ramp
    x[::97] += 0.05  # outliers
    # MAD estimator: relative standard error about 1.65 / sqrt(2 n) -> 2 % here; 4 sigma
    assert robust_white_var(x) == pytest.approx(4e-6, rel=0.08)
    assert np.isnan(robust_white_var([1.0, 2.0, np.nan]))


def test_gain_from_scatter_recovers_a_known_gain() -> None:
    rng = np.random.default_rng(5)
    true_gain = 3.2
    adu = rng.uniform(500.0, 50000.0, 40)  # stars from faint to bright (ADU per frame)
    p_unit = 1.0 / adu
    other = np.full(40, 1e-6) + 5e-3 / adu**1.5  # background and scintillation, known
    n_frames = 300
    # each star's measured variance scatters like a chi2 with n-1 degrees of freedom
    true_var = p_unit / true_gain + other
    ach = true_var * rng.chisquare(n_frames - 1, 40) / (n_frames - 1)
    ach[:3] *= 5.0  # three blended or variable stars
    gain, err, kept = gain_from_scatter(ach, p_unit, other, np.full(40, n_frames))
    assert kept.shape == (40,) and not kept[:3].any() and kept[3:].sum() >= 34
    assert abs(gain - true_gain) < 3 * err
    assert gain == pytest.approx(true_gain, rel=0.1)
    assert 0 < err < 0.1 * true_gain


def test_rescale_gain_restates_photon_and_background_terms() -> None:
    flux1 = np.array([10000.0, 2500.0, -50.0])  # e- at 1 e-/ADU
    background1 = np.array([400.0, 400.0, 400.0])  # e-² at 1 e-/ADU (the annulus, in ADU²)
    err1 = np.sqrt(np.clip(flux1, 0, None) + background1)
    flux4, err4 = rescale_gain(flux1, err1, 4.0)
    np.testing.assert_allclose(flux4, 4.0 * flux1)
    # at 4 e-/ADU: photon variance 4 × flux_ADU, background 16 × its ADU² value
    np.testing.assert_allclose(err4, np.sqrt(4.0 * np.clip(flux1, 0, None) + 16.0 * background1))
    # the fractional photon error falls as 1/sqrt(gain)
    assert err4[0] / flux4[0] < err1[0] / flux1[0]
