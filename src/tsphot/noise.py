"""Noise model: CCD equation terms (Howell 2006), scintillation (Young 1967; Osborn et al. 2015).

All fluxes and noise terms are in electrons collected in one exposure; magnitudes are
instrumental, ``zero_point - 2.5 log10(flux / exptime)``. Every function broadcasts its
arguments with numpy rules, so one call handles all stars and frames at once.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# 2.5 / ln(10): d(mag) = MAG_PER_FRAC * d(flux) / flux.
MAG_PER_FRAC = 2.5 / np.log(10.0)
# Young (1967) scintillation coefficient (D in cm, h in m, t in s) and atmospheric scale height.
YOUNG_COEFF = 0.09
SCALE_HEIGHT_M = 8000.0
# Osborn et al. (2015): Young's formula underestimates the median scintillation by about 1.5.
OSBORN_FACTOR = 1.5


def _nonneg(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got minimum {np.nanmin(arr)!r}")
    return arr


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if np.any(~(arr > 0)):
        raise ValueError(f"{name} must be > 0 (and not NaN), got {arr!r}")
    return arr


def ccd_terms(
    flux_e: ArrayLike,
    n_pix: ArrayLike,
    sky_e_per_pix: ArrayLike,
    dark_e_per_pix: ArrayLike,
    read_noise_e: ArrayLike,
    gain: ArrayLike,
    *,
    n_sky: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """1-sigma (electrons) of each CCD-equation term: photon, sky, dark, read, digitisation.

    The terms add in quadrature to :func:`ccd_sigma`. ``sky_e_per_pix`` and ``dark_e_per_pix``
    are the electrons per pixel collected during the exposure, ``read_noise_e`` is electrons rms
    per pixel, ``gain`` is e-/ADU (digitisation variance gain²/12 e² per pixel). When ``n_sky``
    (pixels used to estimate the sky) is given, each per-pixel term is multiplied by
    ``1 + n_pix / n_sky``, the variance added by the uncertainty of the subtracted sky level.
    A negative net flux contributes no photon noise.
    """
    flux = np.asarray(flux_e, dtype=float)
    npix = _nonneg("n_pix", n_pix)
    sky = _nonneg("sky_e_per_pix", sky_e_per_pix)
    dark = _nonneg("dark_e_per_pix", dark_e_per_pix)
    rn = _nonneg("read_noise_e", read_noise_e)
    g = _nonneg("gain", gain)
    factor = npix if n_sky is None else npix * (1.0 + npix / _positive("n_sky", n_sky))
    shape = np.broadcast_shapes(flux.shape, factor.shape, sky.shape, dark.shape, rn.shape, g.shape)
    # NaN flux stays NaN; negative flux (sky-dominated faint star) has no photon variance.
    photon = np.where(flux > 0, flux, np.where(np.isnan(flux), np.nan, 0.0))
    terms = {
        "photon": np.sqrt(photon),
        "sky": np.sqrt(factor * sky),
        "dark": np.sqrt(factor * dark),
        "read": np.sqrt(factor * rn**2),
        "digitisation": np.sqrt(factor * g**2 / 12.0),
    }
    return {k: np.broadcast_to(v, shape).astype(float) for k, v in terms.items()}


def ccd_sigma(
    flux_e: ArrayLike,
    n_pix: ArrayLike,
    sky_e_per_pix: ArrayLike,
    dark_e_per_pix: ArrayLike,
    read_noise_e: ArrayLike,
    gain: ArrayLike,
    *,
    n_sky: ArrayLike | None = None,
) -> np.ndarray:
    """1-sigma of an aperture flux (electrons) by the CCD equation (Howell 2006), with digitisation.

    sigma² = F + n_pix (1 + n_pix/n_sky) (S + D + R² + gain²/12), the last factor only when
    ``n_sky`` is given; see :func:`ccd_terms` for the units of each argument.
    """
    terms = ccd_terms(flux_e, n_pix, sky_e_per_pix, dark_e_per_pix, read_noise_e, gain, n_sky=n_sky)
    return np.sqrt(sum(t**2 for t in terms.values()))


def scintillation_sigma(
    aperture_diameter_m: ArrayLike,
    airmass: ArrayLike,
    exptime_s: ArrayLike,
    altitude_m: ArrayLike,
    *,
    osborn_factor: float = OSBORN_FACTOR,
) -> np.ndarray:
    """Fractional scintillation 1-sigma: 0.09 D^(-2/3) X^1.75 exp(-h/8000) (2t)^(-1/2), D in cm.

    Young (1967) with the telescope diameter D (given here in metres), airmass X, observatory
    altitude h (m) and exposure time t (s), multiplied by Osborn et al.'s (2015) empirical
    factor (1.5 by default; pass 1.0 for Young's original formula).
    """
    d_cm = 100.0 * _positive("aperture_diameter_m", aperture_diameter_m)
    x = np.asarray(airmass, dtype=float)
    if np.any(~(x >= 1.0)):
        raise ValueError(f"airmass must be >= 1 (and not NaN), got {x!r}")
    t = _positive("exptime_s", exptime_s)
    h = np.asarray(altitude_m, dtype=float)
    if osborn_factor <= 0:
        raise ValueError(f"osborn_factor must be > 0, got {osborn_factor!r}")
    return (
        osborn_factor
        * YOUNG_COEFF
        * d_cm ** (-2.0 / 3.0)
        * x**1.75
        * np.exp(-h / SCALE_HEIGHT_M)
        / np.sqrt(2.0 * t)
    )


def total_sigma(flux_e: ArrayLike, ccd_sigma_e: ArrayLike, scint_frac: ArrayLike) -> np.ndarray:
    """Total 1-sigma (electrons): CCD noise ⊕ scintillation (fractional, scaled by the flux)."""
    flux = np.asarray(flux_e, dtype=float)
    return np.hypot(np.asarray(ccd_sigma_e, dtype=float), np.asarray(scint_frac) * np.abs(flux))


def mag_from_flux(flux_e: ArrayLike, exptime_s: ArrayLike, zero_point: float = 25.0) -> np.ndarray:
    """Instrumental magnitude zero_point - 2.5 log10(flux_e / exptime_s) (flux in e-, t in s).

    NaN where the flux is not positive.
    """
    flux = np.asarray(flux_e, dtype=float)
    rate = flux / _positive("exptime_s", exptime_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rate > 0, zero_point - 2.5 * np.log10(rate), np.nan)


def mag_err_from_flux(flux_e: ArrayLike, sigma_e: ArrayLike) -> np.ndarray:
    """1-sigma magnitude error 1.0857 sigma/F (mag) of a flux F with error sigma (electrons).

    NaN where the flux is not positive.
    """
    flux = np.asarray(flux_e, dtype=float)
    sigma = np.asarray(sigma_e, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, MAG_PER_FRAC * sigma / flux, np.nan)


def robust_white_var(series: ArrayLike) -> float:
    """White-noise variance of a time series from point-to-point differences (robust, MAD).

    Differences cancel slow trends (airmass, a transit's long flat parts); the MAD ignores
    outliers. NaN points are skipped; fewer than 5 points give NaN.
    """
    x = np.asarray(series, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 5:
        return float("nan")
    d = np.diff(x)
    return float((1.4826 * np.median(np.abs(d - np.median(d)))) ** 2 / 2.0)


def gain_from_scatter(
    achieved_var: ArrayLike,
    photon_var_unit_gain: ArrayLike,
    other_var: ArrayLike,
    n_points: ArrayLike,
    clip: float = 4.0,
) -> tuple[float, float, np.ndarray]:
    """Detector gain (e-/ADU) from the scatter of constant stars: a photon-transfer estimate.

    For star i the fractional white-noise variance is ``P_i / g + O_i``: ``P_i`` is the photon
    variance the star would have at 1 e-/ADU (1 / ADU collected), ``O_i`` every
    gain-independent term (background measured in ADU², scintillation, the ensemble). 1/g is
    fitted by weighted least squares over the stars, each measured variance weighted by its
    own sampling variance (``2.7 × 2 / (n - 1)`` relative, for the MAD-based estimator over
    ``n_points``); stars more than ``clip`` sigma off (blends, variables) are dropped in turn.
    Faint background-limited stars carry little weight, bright photon-limited ones most.
    The error is the formal one, inflated by sqrt(reduced chi-square) when that exceeds 1.
    Returns (gain, error, the mask of stars kept).
    """
    ach = np.asarray(achieved_var, dtype=float)
    p = np.asarray(photon_var_unit_gain, dtype=float)
    o = np.asarray(other_var, dtype=float)
    n = np.asarray(n_points, dtype=float)
    keep = np.isfinite(ach) & np.isfinite(p) & np.isfinite(o) & (p > 0) & (n > 5)
    rel_var = 2.7 * 2.0 / np.maximum(n - 1.0, 1.0)
    inv_g = float("nan")
    sigma_inv = float("nan")
    for _ in range(50):
        if keep.sum() < 3:
            return float("nan"), float("nan"), keep
        # the model variance (weights) at the current gain; start from the stars' own values
        model = ach if not np.isfinite(inv_g) else p * max(inv_g, 0.0) + o
        w = np.where(keep, 1.0 / (rel_var * np.maximum(model, 1e-30) ** 2), 0.0)
        new = float(np.sum(w * p * (ach - o)) / np.sum(w * p * p))
        sigma_inv = float(1.0 / np.sqrt(np.sum(w * p * p)))
        resid = (ach - (p * new + o)) * np.sqrt(w)
        chi2 = float(np.sum(resid[keep] ** 2) / max(keep.sum() - 1, 1))
        worst = int(np.argmax(np.where(keep, np.abs(resid), -1.0)))
        if np.abs(resid[worst]) > clip * np.sqrt(max(chi2, 1.0)) and keep.sum() > 3:
            keep[worst] = False
            inv_g = new
            continue
        if np.isfinite(inv_g) and abs(new - inv_g) <= 1e-6 * abs(new):
            inv_g = new
            break
        inv_g = new
    if not inv_g > 0:
        return float("nan"), float("nan"), keep
    sigma_inv *= np.sqrt(max(chi2, 1.0))
    gain = 1.0 / inv_g
    return gain, gain * gain * sigma_inv, keep


def rescale_gain(
    flux_e: ArrayLike, flux_err_e: ArrayLike, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flux and CCD error (e-) measured at gain g0 restated at gain g = factor × g0.

    Electrons scale with the gain; of the variance, the source's photon term (= flux) scales
    with it once, and the background term measured in the annulus (ADU², so sky photons,
    dark and read noise alike) with its square.
    """
    f = np.asarray(flux_e, dtype=float)
    e = np.asarray(flux_err_e, dtype=float)
    if factor == 1.0:
        return f, e
    photon = np.clip(f, 0.0, None)
    background = np.clip(e**2 - photon, 0.0, None)
    return f * factor, np.sqrt(photon * factor + background * factor**2)


# Excess smaller than this many of its own standard errors is not applied (white sky: zero).
EXCESS_SIGNIFICANCE = 3.0


def background_excess(
    flux_e: ArrayLike,
    predicted_var_e2: ArrayLike,
    valid: ArrayLike,
    *,
    min_points: int = 10,
    point_clip: float = 5.0,
    aperture_clip: float = 4.0,
    significance: float = EXCESS_SIGNIFICANCE,
) -> dict[str, float | int]:
    """Background variance (e², per aperture) the CCD equation misses, from empty-sky apertures.

    ``flux_e`` [frame, aperture] are sky-subtracted sums of apertures placed on empty sky (their
    true flux is 0), ``predicted_var_e2`` the CCD equation's background variance of each sum
    (sky, dark, read noise as measured in the annulus, and the sky estimate's own error).
    Per aperture, the temporal variance about its mean (points beyond ``point_clip`` sigma of
    the MAD clipped, as stars' outliers are) minus the mean predicted variance is one estimate
    of the excess; apertures whose estimate lies beyond ``aperture_clip`` sigma (MAD) of the
    median (a faint star, a satellite trail) are dropped, and the excess is the mean of the
    rest, its error their standard error (the spread across apertures holds both the sampling
    noise of finite series and the excess's real variation over the chip). ``applied`` is
    the excess when it is at least ``significance`` errors above zero, else 0.
    """
    f = np.asarray(flux_e, dtype=float)
    p = np.asarray(predicted_var_e2, dtype=float)
    ok = np.asarray(valid, bool) & np.isfinite(f) & np.isfinite(p)
    est, ach, pred, npts = [], [], [], []
    for j in range(f.shape[1]):
        x, v = f[ok[:, j], j], p[ok[:, j], j]
        if x.size < min_points:
            continue
        keep = np.ones(x.size, bool)
        for _ in range(5):
            med = np.median(x[keep])
            sig = 1.4826 * np.median(np.abs(x[keep] - med))
            new = np.abs(x - med) <= point_clip * sig if sig > 0 else keep
            if np.array_equal(new, keep) or new.sum() < min_points:
                break
            keep = new
        a = float(np.var(x[keep], ddof=1))
        b = float(np.mean(v[keep]))
        est.append(a - b)
        ach.append(a)
        pred.append(b)
        npts.append(int(keep.sum()))
    out: dict[str, float | int] = {
        "excess_var_e2": float("nan"),
        "excess_err_e2": float("nan"),
        "significance": float("nan"),
        "applied_var_e2": 0.0,
        "achieved_var_e2": float("nan"),
        "predicted_var_e2": float("nan"),
        "ratio_rms": float("nan"),
        "n_apertures": 0,
        "n_rejected": 0,
        "median_points": 0,
    }
    if len(est) < 3:
        return out
    d = np.array(est)
    use = np.ones(d.size, bool)
    for _ in range(10):
        med = np.median(d[use])
        sig = 1.4826 * np.median(np.abs(d[use] - med))
        new = np.abs(d - med) <= aperture_clip * sig if sig > 0 else use
        if np.array_equal(new, use) or new.sum() < 3:
            break
        use = new
    excess = float(np.mean(d[use]))
    err = float(np.std(d[use], ddof=1) / np.sqrt(use.sum()))
    a_mean = float(np.mean(np.array(ach)[use]))
    p_mean = float(np.mean(np.array(pred)[use]))
    z = excess / err if err > 0 else float("inf") * np.sign(excess)
    out.update(
        excess_var_e2=excess,
        excess_err_e2=err,
        significance=float(z),
        applied_var_e2=excess if z >= significance else 0.0,
        achieved_var_e2=a_mean,
        predicted_var_e2=p_mean,
        ratio_rms=float(np.sqrt(a_mean / p_mean)) if p_mean > 0 else float("nan"),
        n_apertures=int(use.sum()),
        n_rejected=int((~use).sum()),
        median_points=int(np.median(np.array(npts)[use])),
    )
    return out
