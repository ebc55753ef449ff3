"""Field mode: every star's differential light curve, variability indices, candidate variables.

Each star detected on the reference frame above a signal-to-noise limit is measured in every
frame (pipeline.measure_frame, the same vectorised aperture sums as the targets) and divided by
the night's comparison ensemble (``ensemble.differential``; a comparison star gets its
leave-one-out curve). For every star:

- ``rms``: scatter of its differential magnitudes (mag) about their weighted mean;
- ``p2p_rms``: the white-noise part of that scatter, from point-to-point differences (robust;
  slow trends and variability over many points cancel), as the noise budget measures it;
- ``expected``: the rms its error bars predict (CCD equation ⊕ scintillation ⊕ ensemble);
- ``chi2_red``: reduced chi-square of a constant;
- ``von_neumann``: the von Neumann ratio η = mean square successive difference / variance
  (von Neumann 1941): 2 for white noise, smaller when neighbouring points agree (a slow
  variation); its significance from η's white-noise variance 4(n−2)/(n²−1);
- ``stetson_j``: Stetson's (1996, PASP 108, 851) J index of successive pairs: about 0 for noise,
  positive for correlated variation.

Candidates: a star is a candidate variable when its scatter is above what the noise model
predicts by the chosen significance. Two tests, each at half the false-alarm rate α (so a
constant star is flagged with probability ≤ α): the chi-square of a constant, with the errors
first scaled by the field's own excess (the running median of chi2_red over stars of similar
magnitude, when above 1: most stars are constant, so this calibrates errors the noise model
misses, e.g. flat-field errors of bright stars), and the von Neumann ratio (time-correlated
variation the chi-square dilutes), its z-score likewise centred and scaled by the running
median and MAD of the field's z-scores when those show shared correlated noise. Both
calibrations are taken from the stars not flagged, repeated until the flags settle, so that
the variables themselves do not set the bar for their neighbours in magnitude.

The noise model's prediction line for the RMS–magnitude plot is the stars' predicted
variance fitted as a/F + b/F² + c in the flux F (photon, background and constant terms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from tsphot import ensemble, measure, noise

MAG_ZERO_POINT = 25.0


@dataclass
class FieldResult:
    """Every star of the field: curves [frame, star], indices per star, candidates."""

    names: list[str]
    roles: list[str]
    x: np.ndarray  # reference-frame position (px)
    y: np.ndarray
    mag: np.ndarray  # median instrumental magnitude (-2.5 log10(e-/s) + 25)
    diff_mag: np.ndarray  # [frame, star]
    diff_mag_err: np.ndarray
    valid: np.ndarray
    status: np.ndarray  # [frame, star] str: ok | outlier | cloud | bad_frame | per-star status
    indices: dict[str, np.ndarray]
    candidate: np.ndarray
    false_alarm: float
    model_mag: np.ndarray  # noise-model line: magnitudes ...
    model_rms: np.ndarray  # ... and predicted rms (mag)
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    flags: list[str] = field(default_factory=list)  # per star: comma-separated reasons
    # the model line without the background excess (the CCD equation's white background
    # alone), when an excess was measured and applied; None otherwise
    model_rms_no_excess: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def _cutouts(data: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(data.astype(np.float64, copy=False), half + 1, constant_values=np.nan)
    off = np.arange(-half, half + 1)
    rows = (iy[:, None] + half + 1 + off[None, :])[:, :, None]
    cols = (ix[:, None] + half + 1 + off[None, :])[:, None, :]
    return padded[rows, cols]


MAX_SKY_PIXELS = 400  # field stars' sky: enough pixels for the median, cheap for many stars
_CLIP3_STD_FACTOR = 0.98664  # as measure.py: a ±3σ-clipped Gaussian's std shrinks by this
_MEDIAN_VAR_FACTOR = np.pi / 2  # a median of n values has π/2 times the variance of the mean


def sky_ring(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterated 3σ-clipped median sky of each star's annulus (ADU/px), its noise, pixel count.

    The estimator of measure.annulus_sky, made cheap for hundreds of stars: the ring is the
    pixels whose integer offset from the star's nearest pixel lies within [r_in, r_out] (the
    sub-pixel edge is not traced; beyond MAX_SKY_PIXELS only every other pixel, as on a
    checkerboard), gathered in one indexing step; each star's values are sorted once, after
    which clipping about the median keeps an interval of the sorted values, so every
    iteration needs two counts and prefix sums for the mean and variance. Ring pixels within
    ``mask_radius`` of a position in ``mask_xy`` (other stars) are left out first, as
    measure.annulus_stats does: a bright neighbour's wings in the ring would otherwise lift
    the sky by an amount that follows the seeing, a slow trend the variability tests see.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    if n == 0:
        return np.empty(0), np.empty(0), np.zeros(0, int)
    half = int(np.ceil(r_out))
    oy, ox = np.mgrid[-half : half + 1, -half : half + 1]
    rr = np.hypot(ox, oy)
    ring = (rr >= r_in) & (rr <= r_out)
    if ring.sum() > MAX_SKY_PIXELS:  # a checkerboard over the whole annulus: half the cost
        ring &= (ox + oy) % 2 == 0
    dy, dx = oy[ring], ox[ring]
    pad = half + 1
    padded = np.pad(np.asarray(data, float), pad, constant_values=np.nan)
    ix, iy = measure.nearest_pixel(x, y, data.shape)
    vals = padded[iy[:, None] + dy[None, :] + pad, ix[:, None] + dx[None, :] + pad]
    _mask_neighbours(vals, x, y, ix, iy, dx, dy, r_out, mask_xy, mask_radius)
    srt = np.sort(np.where(np.isfinite(vals), vals, np.inf), axis=1)
    c = np.isfinite(vals).sum(axis=1)
    rows = np.arange(n)
    last = srt.shape[1] - 1
    shift = np.where(c > 0, srt[rows, np.clip((c - 1) // 2, 0, last)], 0.0)
    d = np.where(np.isfinite(srt), srt - shift[:, None], 0.0)
    cs1 = np.concatenate([np.zeros((n, 1)), np.cumsum(d, axis=1)], axis=1)
    cs2 = np.concatenate([np.zeros((n, 1)), np.cumsum(d * d, axis=1)], axis=1)

    def stats(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = hi - lo
        med = 0.5 * (
            srt[rows, np.clip(lo + (k - 1) // 2, 0, last)]
            + srt[rows, np.clip(lo + k // 2, 0, last)]
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (cs1[rows, hi] - cs1[rows, lo]) / k
            var = (cs2[rows, hi] - cs2[rows, lo]) / k - mean**2
        return med, np.sqrt(np.clip(var, 0, None)), k

    lo, hi = np.zeros(n, int), c.copy()
    for _ in range(5):
        med, std, _ = stats(lo, hi)
        with np.errstate(invalid="ignore"):
            new_lo = (srt < (med - 3.0 * std)[:, None]).sum(axis=1)
            new_hi = np.minimum((srt <= (med + 3.0 * std)[:, None]).sum(axis=1), c)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, std, count = stats(lo, hi)
    few = count < 10
    return np.where(few, np.nan, med), np.where(few, np.nan, std / _CLIP3_STD_FACTOR), count


def moffat_in_aperture(r_ap: float, fwhm: float, beta: float = 2.5) -> Any:
    """Function of distance d (px): the fraction of a Moffat star's light inside a circle of
    radius r_ap centred d away (tabulated once by integration over the circle's area)."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    # points spread evenly over the aperture (a polar grid of equal-area cells)
    n_r, n_t = 24, 48
    rr = r_ap * np.sqrt((np.arange(n_r) + 0.5) / n_r)
    tt = 2 * np.pi * (np.arange(n_t) + 0.5) / n_t
    px = (rr[:, None] * np.cos(tt)[None, :]).ravel()
    py = (rr[:, None] * np.sin(tt)[None, :]).ravel()
    cell = np.pi * r_ap**2 / px.size
    grid = np.linspace(0.0, r_ap + 10.0 * fwhm, 400)
    norm = (beta - 1.0) / (np.pi * alpha**2)  # the profile integrates to 1
    table = np.array(
        [norm * cell * np.sum((1 + ((px - g) ** 2 + py**2) / alpha**2) ** -beta) for g in grid]
    )

    def frac(d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, float)
        far = norm * np.pi * r_ap**2 * (1 + d**2 / alpha**2) ** -beta  # beyond the table
        return np.where(d <= grid[-1], np.interp(d, grid, table), far)

    return frac


def _mask_neighbours(
    vals: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    r_out: float,
    mask_xy: np.ndarray | None,
    mask_radius: float | np.ndarray,
) -> None:
    """Set to NaN, in place, ring values [star, pixel] within a masking star's radius."""
    mxy = np.asarray(mask_xy if mask_xy is not None else np.empty((0, 2)), float).reshape(-1, 2)
    mrad = np.broadcast_to(np.asarray(mask_radius, float), (len(mxy),))
    if len(mxy) == 0 or not np.nanmax(mrad) > 0:
        return
    from scipy.spatial import cKDTree

    tree = cKDTree(mxy)
    pos = np.column_stack([np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)])
    for i, js in enumerate(tree.query_ball_point(pos, r_out + float(np.nanmax(mrad)))):
        if not js:
            continue
        m, rm = mxy[js], mrad[js]
        other = np.hypot(m[:, 0] - x[i], m[:, 1] - y[i]) > 1.5  # not the star itself
        if not other.any():
            continue
        m, rm = m[other], rm[other]
        gx = (ix[i] + dx)[None, :] - m[:, 0, None]
        gy = (iy[i] + dy)[None, :] - m[:, 1, None]
        vals[i, ((gx**2 + gy**2) <= rm[:, None] ** 2).any(axis=0)] = np.nan


def photometry(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ap: Any,
    gain: float,
    saturation: float | None = None,
    raw: np.ndarray | None = None,
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> dict[str, np.ndarray]:
    """measure.measure_stars' fluxes and errors (e-) for hundreds of stars, at a fraction of
    the cost: same apertures (sep, exact overlap) and CCD equation, sky from `sky_ring`
    (other stars within mask_radius of mask_xy left out of the rings)."""
    import sep

    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    n, nr = len(x), len(ap.radii)
    sky, sky_std, n_sky = sky_ring(data, x, y, *ap.annulus, mask_xy, mask_radius)
    img = np.ascontiguousarray(data, dtype=np.float64)
    finite = np.isfinite(img)
    mask = None if finite.all() else ~finite
    if mask is not None:
        img = np.where(finite, img, 0.0)
    flux = np.full((n, nr), np.nan)
    err = np.full((n, nr), np.nan)
    theta = np.radians(ap.theta_deg)
    var_sky_e = (sky_std * gain) ** 2
    for k, r in enumerate(ap.radii):
        if ap.ellipticity > 0:
            b = r * (1.0 - ap.ellipticity)
            s, _, _ = sep.sum_ellipse(img, x, y, r, b, theta, r=1.0, mask=mask, subpix=0)
        else:
            s, _, _ = sep.sum_circle(img, x, y, r, mask=mask, subpix=0)
        a = float(np.pi * r * r * (1.0 - ap.ellipticity))
        flux[:, k] = (s - sky * a) * gain
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.clip(flux[:, k], 0, None) + a * var_sky_e
            var = var + a * a * var_sky_e * _MEDIAN_VAR_FACTOR / n_sky
        err[:, k] = np.sqrt(var)
    src = raw if raw is not None else data
    half = int(np.ceil(max(ap.radii)))
    ix, iy = measure.nearest_pixel(x, y, data.shape)
    off = np.arange(-half, half + 1, dtype=float)
    r2 = ((ix - x)[:, None, None] + off[None, None, :]) ** 2 + (
        (iy - y)[:, None, None] + off[None, :, None]
    ) ** 2
    with np.errstate(invalid="ignore"):
        cut = np.where(r2 <= max(ap.radii) ** 2, _cutouts(src, ix, iy, half), np.nan)
        cut = cut.reshape(n, -1)
        peak = np.max(np.where(np.isfinite(cut), cut, -np.inf), axis=1)
    peak = np.where(np.isfinite(peak), peak, np.nan)
    saturated = peak >= saturation if saturation is not None else np.zeros(n, bool)
    return {"flux": flux, "flux_err": err, "sky": sky, "sky_std": sky_std, "n_sky": n_sky,
            "peak": peak, "saturated": saturated}  # fmt: skip


def instrumental(
    flux: np.ndarray, flux_err: np.ndarray, exptime: np.ndarray, scint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Instrumental magnitude and error (CCD ⊕ scintillation) of fluxes [frame, star] in e-."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = -2.5 * np.log10(flux / exptime[:, None]) + MAG_ZERO_POINT
        err = 1.0857362 * np.hypot(flux_err / flux, scint[:, None])
    return mag, err


def flag_outliers(
    y: np.ndarray, err: np.ndarray, valid: np.ndarray, sigma: float, half: int = 3
) -> np.ndarray:
    """Points [frame, star] more than sigma × error from the median of their 2×half neighbours.

    Vectorised over stars; neighbours are the valid points in frame order. A running median
    follows slow variation and eclipses, so only isolated jumps are flagged.
    """
    n_s = y.shape[1]
    out = np.zeros_like(valid)
    for j in range(n_s):
        idx = np.flatnonzero(valid[:, j])
        m = idx.size
        if m < 5:
            continue
        yj, ej = y[idx, j], err[idx, j]
        pad = np.concatenate([np.full(half, np.nan), yj, np.full(half, np.nan)])
        win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1)
        nb = np.delete(win, half, axis=1)  # the point itself is not its own neighbour
        with np.errstate(all="ignore"):
            med = np.nanmedian(nb, axis=1)
            cnt = np.isfinite(nb).sum(axis=1)
            e_med = np.sqrt(np.pi / 2) * np.sqrt(np.mean(ej**2) / np.maximum(cnt, 1))
            dev = np.abs(yj - med) / np.hypot(ej, e_med)
        out[idx[(cnt >= 2) & (dev > sigma)], j] = True
    return out


def variability_indices(dm: np.ndarray, de: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per star (columns of [frame, star]): n, rms, expected, chi2_red, η and its z, Stetson J."""
    ok = valid & np.isfinite(dm) & np.isfinite(de) & (de > 0)
    n = ok.sum(axis=0)
    w = np.where(ok, 1.0 / np.where(ok, de, 1.0) ** 2, 0.0)
    y = np.where(ok, dm, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * y).sum(axis=0) / w.sum(axis=0)
        r = np.where(ok, dm - mean, 0.0)
        rms = np.sqrt((r**2).sum(axis=0) / np.maximum(n - 1, 1))
        expected = np.sqrt((np.where(ok, de, 0.0) ** 2).sum(axis=0) / n)
        chi2 = (r**2 * w).sum(axis=0)
        chi2_red = chi2 / (n - 1)
    n_s = dm.shape[1]
    p2p = np.full(n_s, np.nan)
    vn = np.full(n_s, np.nan)
    vn_z = np.full(n_s, np.nan)
    sj = np.full(n_s, np.nan)
    for j in range(n_s):
        idx = np.flatnonzero(ok[:, j])
        m = idx.size
        if m < 4:
            continue
        rj = r[idx, j]
        p2p[j] = math.sqrt(noise.robust_white_var(rj))
        xj = rj / de[idx, j]  # normalised: points with larger errors count less
        xj = xj - xj.mean()
        ss = (xj**2).sum()
        if ss > 0:
            vn[j] = (np.diff(xj) ** 2).sum() / ss
            vn_z[j] = (vn[j] - 2.0) / math.sqrt(4.0 * (m - 2) / (m * m - 1.0))
        delta = math.sqrt(m / (m - 1)) * rj / de[idx, j]
        p = delta[:-1] * delta[1:]  # successive pairs
        sj[j] = float(np.mean(np.sign(p) * np.sqrt(np.abs(p))))
    chi2_red = np.where(n >= 2, chi2_red, np.nan)
    return {
        "n_points": n,
        "rms": np.where(n >= 2, rms, np.nan),
        "p2p_rms": p2p,
        "expected": np.where(n >= 1, expected, np.nan),
        "chi2": np.where(n >= 2, chi2, np.nan),
        "chi2_red": chi2_red,
        "von_neumann": vn,
        "von_neumann_z": vn_z,
        "stetson_j": sj,
    }


def _running(
    mag: np.ndarray,
    values: np.ndarray,
    per_bin: int,
    stat: Any,
    use: np.ndarray | None = None,
) -> np.ndarray:
    """stat() of values over the per_bin stars nearest in magnitude to each star (NaN-safe).

    Only stars in ``use`` (default: all) enter the windows; every star with a finite
    magnitude gets a value, so stars left out (suspected variables) are still calibrated.
    """
    ok = np.isfinite(mag) & np.isfinite(values)
    if use is not None:
        ok &= np.asarray(use, bool)
    out = np.full(mag.size, np.nan)
    if ok.sum() < 5:
        return out
    order = np.flatnonzero(ok)[np.argsort(mag[ok], kind="stable")]
    ref_mag = mag[order]
    k = max(5, min(per_bin, order.size))
    windows = {}
    for j in np.flatnonzero(np.isfinite(mag)):
        i = int(np.searchsorted(ref_mag, mag[j], side="left"))
        lo = min(max(0, i - k // 2), order.size - k)
        if lo not in windows:
            windows[lo] = stat(values[order[lo : lo + k]])
        out[j] = windows[lo]
    return out


def excess_scale(
    mag: np.ndarray, chi2_red: np.ndarray, per_bin: int = 25, use: np.ndarray | None = None
) -> np.ndarray:
    """Each star's error scale: running median of chi2_red over stars of similar magnitude, ≥ 1.

    Most stars are constant, so the median tells how far the noise model falls short at that
    brightness; ``use`` leaves suspected variables out of the windows.
    """
    med = _running(mag, chi2_red, per_bin, np.median, use)
    return np.where(np.isfinite(med), np.maximum(med, 1.0), 1.0)


def von_neumann_calibration(
    mag: np.ndarray, z: np.ndarray, per_bin: int = 25, use: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Centre (≤ 0) and spread (≥ 1) of the von Neumann z-scores of stars of similar magnitude.

    White noise gives 0 and 1. Slow systematics shared by many stars (extinction colour terms,
    flat-field errors as the field drifts) pull every star's ratio below 2; measured on the
    field itself, that shift and widening is taken out before a star is called variable.
    ``use`` leaves suspected variables out: every variable pulls z down, so a field with many
    of them would otherwise look like one with shared red noise and hide the weaker ones.
    """
    centre = _running(mag, z, per_bin, np.median, use)

    def spread_of(v: np.ndarray) -> float:
        return float(1.4826 * np.median(np.abs(v - np.median(v))))

    spread = _running(mag, z, per_bin, spread_of, use)
    centre = np.where(np.isfinite(centre), np.minimum(centre, 0.0), 0.0)
    spread = np.where(np.isfinite(spread), np.maximum(spread, 1.0), 1.0)
    return centre, spread


def candidates(
    ind: dict[str, np.ndarray],
    scale: np.ndarray,
    alpha: float,
    vn_centre: np.ndarray | float = 0.0,
    vn_spread: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate flags and the two p-values (chi-square, von Neumann), each test at alpha/2."""
    n = ind["n_points"]
    dof = np.maximum(n - 1, 1)
    with np.errstate(invalid="ignore"):
        p_chi2 = np.where(n >= 4, stats.chi2.sf(ind["chi2"] / scale, dof), np.nan)
        z = (ind["von_neumann_z"] - vn_centre) / vn_spread
        p_vn = np.where(n >= 8, stats.norm.cdf(z), np.nan)
    cand = (np.nan_to_num(p_chi2, nan=1.0) < alpha / 2) | (np.nan_to_num(p_vn, nan=1.0) < alpha / 2)
    return cand, p_chi2, p_vn


MAX_CALIBRATION_PASSES = 10


def calibrated_candidates(
    mag: np.ndarray,
    ind: dict[str, np.ndarray],
    alpha: float,
    eligible: np.ndarray | None = None,
    per_bin: int = 25,
) -> tuple[np.ndarray, ...]:
    """Field-calibrated candidates: error scale, von Neumann centre and spread, flags, p-values.

    The calibration is taken from the stars not (yet) flagged, repeated until the flags no
    longer change: variables then cannot inflate the scale and spread that decide whether
    their weaker neighbours in magnitude are variable (with a fifth of a field variable, the
    first pass alone hid stars of three times their noise). Returns scale, centre, spread,
    candidate flags, p_chi2 and p_von_neumann. Only ``eligible`` stars (default: all) ever
    enter the calibration.
    """
    eligible = np.ones(mag.size, bool) if eligible is None else np.asarray(eligible, bool)
    use = eligible.copy()
    for _ in range(MAX_CALIBRATION_PASSES):
        scale = excess_scale(mag, ind["chi2_red"], per_bin, use)
        vn_c, vn_s = von_neumann_calibration(mag, ind["von_neumann_z"], per_bin, use)
        cand, p_chi2, p_vn = candidates(ind, scale, alpha, vn_c, vn_s)
        new_use = eligible & ~cand
        if np.array_equal(new_use, use):
            break
        use = new_use
    return scale, vn_c, vn_s, cand, p_chi2, p_vn


def noise_model_line(
    mag: np.ndarray, expected: np.ndarray, exptime: float, n_grid: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted rms (mag) against magnitude: expected² fitted as a/F + b/F² + c, F in e-."""
    ok = np.isfinite(mag) & np.isfinite(expected) & (expected > 0)
    if ok.sum() < 3:
        return np.empty(0), np.empty(0)
    f = 10 ** (-0.4 * (mag[ok] - MAG_ZERO_POINT)) * exptime
    var = expected[ok] ** 2
    x = np.column_stack([1 / f, 1 / f**2, np.ones_like(f)])
    # relative weights: each star's variance known to a similar fraction
    coef, *_ = np.linalg.lstsq(x / var[:, None], np.ones_like(var), rcond=None)
    coef = np.clip(coef, 0, None)
    grid = np.linspace(mag[ok].min() - 0.2, mag[ok].max() + 0.2, n_grid)
    fg = 10 ** (-0.4 * (grid - MAG_ZERO_POINT)) * exptime
    pred = np.sqrt(coef[0] / fg + coef[1] / fg**2 + coef[2])
    return grid, pred


def field_curves(
    mag: np.ndarray, mag_err: np.ndarray, valid: np.ndarray, ens: ensemble.EnsembleResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Differential magnitudes [frame, star] of field stars against the night's ensemble."""
    dm, de = ensemble.differential(mag, mag_err, ens)
    ok = valid & np.isfinite(dm) & np.isfinite(de) & (de > 0)
    return dm, de, ok


def analyse(
    names: list[str],
    roles: list[str],
    x: np.ndarray,
    y: np.ndarray,
    mag_inst: np.ndarray,
    dm: np.ndarray,
    de: np.ndarray,
    valid: np.ndarray,
    status: np.ndarray,
    exptime: float,
    alpha: float,
    outlier_sigma: float = 5.0,
    blended: np.ndarray | None = None,
) -> FieldResult:
    """Outliers, indices, error scale, candidates and the noise-model line for all stars.

    Blended stars (a neighbour's light in the aperture) are never candidates and stay out of
    the field's calibration: their scatter follows the seeing, not the noise model.
    """
    out = flag_outliers(dm, de, valid, outlier_sigma)
    v = valid & ~out
    status = status.copy()
    status[out] = "outlier"
    ind = variability_indices(dm, de, v)
    with np.errstate(all="ignore"):
        mag = np.nanmedian(np.where(np.isfinite(mag_inst), mag_inst, np.nan), axis=0)
    blended = np.zeros(mag.size, bool) if blended is None else np.asarray(blended, bool)
    scale, vn_c, vn_s, cand, p_chi2, p_vn = calibrated_candidates(mag, ind, alpha, ~blended)
    cand &= ~blended
    ind["noise_scale"] = scale
    ind["von_neumann_z_centre"] = vn_c
    ind["von_neumann_z_spread"] = vn_s
    ind["p_chi2"] = p_chi2
    ind["p_von_neumann"] = p_vn
    grid, pred = noise_model_line(mag, ind["expected"], exptime)
    return FieldResult(
        names=list(names),
        roles=list(roles),
        x=np.asarray(x, float),
        y=np.asarray(y, float),
        mag=mag,
        diff_mag=dm,
        diff_mag_err=de,
        valid=v,
        status=status,
        indices=ind,
        candidate=cand,
        false_alarm=alpha,
        model_mag=grid,
        model_rms=pred,
    )


def reduce_field(settings: Any, plan: Any, results: list, red: Any, notes: dict) -> FieldResult:
    """Field mode's reduce step: every star's curve against the night's ensemble, and indices.

    The planned objects come first (targets and checks with their own curves, comparison stars
    with their leave-one-out curves), then the field stars F0001… in reference-frame order.
    """
    from tsphot import ingest

    k = red.radius_index
    n_f = len(results)
    n_fs = 0 if plan.field_xy is None else len(plan.field_xy)
    flux = np.full((n_f, n_fs), np.nan)
    ferr = np.full((n_f, n_fs), np.nan)
    fstat = np.empty((n_f, n_fs), dtype=object)
    for i, r in enumerate(results):
        c = r.columns
        if r.status == "ok" and "field_flux" in c:
            flux[i], ferr[i] = c["field_flux"][:, k], c["field_flux_err"][:, k]
            fstat[i] = c["field_status"]
        else:
            fstat[i] = r.status if r.status != "ok" else "not_measured"
    # the background excess measured on the empty-sky apertures, as every star carries it
    ferr = np.sqrt(ferr**2 + getattr(red, "excess_var", 0.0))
    with np.errstate(invalid="ignore"):
        mag, mag_err = instrumental(flux, ferr, red.exptime, red.scint)
    valid = (fstat == "ok") & np.isfinite(mag) & np.isfinite(mag_err)
    dm_f, de_f, ok_f = field_curves(mag, mag_err, valid, red.ensemble)

    objs = plan.objects
    ens = red.ensemble
    col_of = {int(oi): j for j, oi in enumerate(red.comp_index)}
    n_o = len(objs)
    dm_o = np.full((n_f, n_o), np.nan)
    de_o = np.full((n_f, n_o), np.nan)
    ok_o = np.zeros((n_f, n_o), bool)
    ostat = np.empty((n_f, n_o), dtype=object)
    for i, r in enumerate(results):
        ostat[i] = r.columns["obj_status"] if r.status == "ok" else r.status
    for oi, o in enumerate(objs):
        if o.role == "comp":
            j = col_of[oi]
            dm_o[:, oi], de_o[:, oi] = ens.loo_mag[:, j], ens.loo_err[:, j]
            ok_o[:, oi] = red.valid[:, oi] & np.isfinite(dm_o[:, oi])
        elif o.name in red.curves:
            cv = red.curves[o.name]
            dm_o[:, oi], de_o[:, oi] = cv.diff_mag, cv.diff_mag_err
            ok_o[:, oi] = red.valid[:, oi] & np.isfinite(cv.diff_mag) & np.isfinite(cv.diff_mag_err)

    dm = np.hstack([dm_o, dm_f])
    de = np.hstack([de_o, de_f])
    ok = np.hstack([ok_o, ok_f])
    status = np.hstack([ostat, fstat]).astype(object)
    status[(status == "ok") & ~ok] = "no_flux"
    cloudy = np.asarray(red.cloudy, bool)
    status[cloudy[:, None] & (status == "ok")] = "cloud"
    ok &= ~cloudy[:, None]
    names = [o.name for o in objs] + [f"F{i + 1:04d}" for i in range(n_fs)]
    roles = [o.role for o in objs] + ["field"] * n_fs
    fxy = plan.field_xy if n_fs else np.zeros((0, 2))
    x = np.concatenate([[o.x for o in objs], fxy[:, 0]])
    y = np.concatenate([[o.y for o in objs], fxy[:, 1]])
    mag_all = np.hstack([red.mag, mag])
    exptime = float(np.nanmedian(red.exptime[red.exptime > 0]))
    info = notes.get("field", {})
    blended = np.concatenate([np.zeros(n_o, bool), np.asarray(info.get("blended", []), bool)])
    if blended.size != len(names):
        blended = np.zeros(len(names), bool)
    # A neighbour's light leaks in and out of the aperture as the seeing changes: a blended
    # star's scatter is instrumental as often as not. Its indices stay; it is not a candidate.
    res = analyse(
        names, roles, x, y, mag_all, dm, de, ok, status, exptime,
        settings.field_false_alarm, settings.outlier_sigma, blended,
    )  # fmt: skip
    excess = float(getattr(red, "excess_var", 0.0))
    if excess > 0 and res.model_mag.size:
        f_grid = 10 ** (-0.4 * (res.model_mag - MAG_ZERO_POINT)) * exptime
        ex = (noise.MAG_PER_FRAC * np.sqrt(excess) / f_grid) ** 2
        res.model_rms_no_excess = np.sqrt(np.clip(res.model_rms**2 - ex, 0, None))
    header = notes.get("reference_header")
    wcs = ingest.quiet_wcs(header) if header is not None else None
    if wcs is not None:
        sky = wcs.pixel_to_world(res.x, res.y)
        res.ra, res.dec = sky.ra.deg, sky.dec.deg
    n_sat = (status == "saturated").sum(axis=0)
    n_edge = np.isin(status, ["near_edge", "off_frame"]).sum(axis=0)
    res.flags = [
        ",".join(
            f
            for f, on in (
                ("blended", blended[j]),
                (f"saturated_in_{n_sat[j]}_frames", n_sat[j] > 0),
                (f"edge_in_{n_edge[j]}_frames", n_edge[j] > 0),
            )
            if on
        )
        for j in range(len(names))
    ]
    res.notes = {
        "n_stars": len(names),
        "n_field_stars": n_fs,
        "snr_limit": info.get("snr_limit"),
        "false_alarm_rate": settings.field_false_alarm,
        "n_candidates": int(res.candidate.sum()),
        "candidates": [names[j] for j in np.flatnonzero(res.candidate)],
        "radius_px": float(red.radius),
        "background_excess_var_e2": excess,
        "method": "chi-square of a constant (errors scaled by the field's running-median excess) "
        "or von Neumann ratio, each at half the false-alarm rate; blended stars are not candidates",
    }
    notes["field"] = res.notes
    return res
