"""Measurement: recentring, exact-overlap aperture sums, annulus sky, CCD-equation errors."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import sep
from scipy.ndimage import binary_dilation, median_filter

# A Gaussian clipped at ±3σ keeps 99.73 % of its values and its std shrinks by this factor;
# dividing by it makes the clipped std an unbiased estimate of the sky noise.
_CLIP3_STD_FACTOR = 0.98664
# The variance of a median of n Gaussian values is π/2 times that of their mean.
_MEDIAN_VAR_FACTOR = np.pi / 2


@dataclass(frozen=True)
class Apertures:
    """Aperture geometry: radii (px), sky annulus (px), ellipticity (1 − b/a) and angle (deg)."""

    radii: tuple[float, ...]
    annulus: tuple[float, float]
    ellipticity: float = 0.0
    theta_deg: float = 0.0


def row_nanmedian(v: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an empty row); much faster than np.nanmedian."""
    fin = np.isfinite(v)
    c = fin.sum(axis=1)
    srt = np.sort(np.where(fin, v, np.inf), axis=1)
    rows = np.arange(len(v))
    lo = np.clip((c - 1) // 2, 0, v.shape[1] - 1)
    hi = np.clip(c // 2, 0, v.shape[1] - 1)
    med = 0.5 * (srt[rows, lo] + srt[rows, hi])
    med[c == 0] = np.nan
    return med


def _cutouts(data: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """Stack of (2 half + 1)² cutouts centred on integer pixels; NaN beyond the frame."""
    padded = np.pad(data.astype(np.float64, copy=False), half + 1, constant_values=np.nan)
    off = np.arange(-half, half + 1)
    rows = (iy[:, None] + half + 1 + off[None, :])[:, :, None]
    cols = (ix[:, None] + half + 1 + off[None, :])[:, None, :]
    return padded[rows, cols]


def recentre(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    box: int = 11,
    max_shift: float = 3.0,
    min_snr: float = 20.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre of mass above the local background; keeps the prediction if too faint or too far."""
    x0 = np.asarray(x, float)
    y0 = np.asarray(y, float)
    n = len(x0)
    if n == 0:
        return x0.copy(), y0.copy(), np.zeros(0, bool)
    half = box // 2
    ny, nx = data.shape
    off = np.arange(-half, half + 1, dtype=float)
    xc, yc = x0.copy(), y0.copy()
    alive = np.isfinite(xc) & np.isfinite(yc)
    for _ in range(3):
        ix = np.clip(np.round(np.nan_to_num(xc)).astype(int), -1, nx)
        iy = np.clip(np.round(np.nan_to_num(yc)).astype(int), -1, ny)
        cut = _cutouts(data, ix, iy, half)
        edge = np.concatenate(
            [cut[:, 0, :], cut[:, -1, :], cut[:, 1:-1, 0], cut[:, 1:-1, -1]], axis=1
        )
        bg = np.median(edge, axis=1)
        noise = 1.4826 * np.median(np.abs(edge - bg[:, None]), axis=1) + 1e-6
        w = cut - bg[:, None, None]
        # Only pixels clearly above the noise vote, so sky noise cannot drag the centre.
        w = np.where(w > 3 * noise[:, None, None], w, 0.0)
        s = w.sum(axis=(1, 2))
        npix = np.maximum((w > 0).sum(axis=(1, 2)), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = alive & np.isfinite(s) & (s > 0) & (s / (noise * np.sqrt(npix)) >= min_snr)
            dx = (w.sum(axis=1) * off).sum(axis=1) / s
            dy = (w.sum(axis=2) * off).sum(axis=1) / s
        alive &= ok
        xc = np.where(alive, ix + dx, xc)
        yc = np.where(alive, iy + dy, yc)
    moved = alive & (np.hypot(xc - x0, yc - y0) <= max_shift)
    return np.where(moved, xc, x0), np.where(moved, yc, y0), moved


def annulus_sky(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, r_in: float, r_out: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped median sky (ADU/px), its noise per pixel and the pixel count, per star."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    if n == 0:
        return np.empty(0), np.empty(0), np.zeros(0, int)
    half = int(np.ceil(r_out)) + 1
    ny, nx = data.shape
    ix = np.clip(np.round(np.nan_to_num(x)).astype(int), -1, nx)
    iy = np.clip(np.round(np.nan_to_num(y)).astype(int), -1, ny)
    cut = _cutouts(data, ix, iy, half)
    off = np.arange(-half, half + 1, dtype=float)
    ddx = (ix - x)[:, None, None] + off[None, None, :]
    ddy = (iy - y)[:, None, None] + off[None, :, None]
    r2 = ddx**2 + ddy**2
    vals = np.where((r2 >= r_in**2) & (r2 <= r_out**2), cut, np.nan).reshape(n, -1)
    base = vals
    keep = np.isfinite(base)
    for _ in range(5):
        v = np.where(keep, base, np.nan)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: stars off the frame
            med = row_nanmedian(v)
            std = np.nanstd(v, axis=1)
            new = np.isfinite(base) & (np.abs(base - med[:, None]) <= 3.0 * std[:, None])
        if np.array_equal(new, keep):
            break
        keep = new
    v = np.where(keep, base, np.nan)
    count = keep.sum(axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = row_nanmedian(v)
        std = np.nanstd(v, axis=1) / _CLIP3_STD_FACTOR
    few = count < 10
    med[few], std[few] = np.nan, np.nan
    return med, std, count


def clean_cosmic_rays(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    gain: float,
    sky_std: np.ndarray,
    *,
    fwhm: float | None = None,
    sigma: float = 5.0,
    objlim: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosmic-ray pixels inside apertures replaced by their 3×3 median; count per star.

    A pixel is a cosmic ray when it stands above its 3×3 median by `sigma` times its noise and
    is sharper than any star: its excess over the median, divided by the local fine structure
    (3×3 median minus 7×7 median of that), exceeds `objlim` (van Dokkum 2001, L.A.Cosmic); and
    it must be, or touch, a pixel that stands above its neighbours in every direction.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    counts = np.zeros(n, int)
    if n == 0:
        return data, counts
    half = int(np.ceil(radius)) + 4
    ny, nx = data.shape
    ix = np.clip(np.round(np.nan_to_num(x)).astype(int), -1, nx)
    iy = np.clip(np.round(np.nan_to_num(y)).astype(int), -1, ny)
    cut = _cutouts(data, ix, iy, half)
    fill = np.where(np.isfinite(cut), cut, np.nanmedian(cut, axis=(1, 2), keepdims=True))
    med3 = median_filter(fill, size=(1, 3, 3), mode="nearest")
    fine = med3 - median_filter(med3, size=(1, 7, 7), mode="nearest")
    excess = fill - med3
    sky_var = np.nan_to_num(np.asarray(sky_std, float), nan=np.inf)[:, None, None] ** 2
    noise = np.sqrt(
        sky_var + np.clip(med3 - np.nanmedian(fill, axis=(1, 2), keepdims=True), 0, None) / gain
    )
    off = np.arange(-half, half + 1, dtype=float)
    r2 = ((ix - x)[:, None, None] + off[None, None, :]) ** 2 + (
        (iy - y)[:, None, None] + off[None, :, None]
    ) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = (
            (excess > sigma * noise)
            & (excess > objlim * np.maximum(fine, noise))
            & (r2 <= (radius + 1.0) ** 2)
            & np.isfinite(cut)
        )
    # Seeds stand above the mean of each pair of opposite neighbours, in all four directions.
    # The flank of an undersampled star passes the tests above but not this one: along the
    # radius its core is brighter than its excess; a cosmic ray, even on a flank, passes.
    pad = np.pad(fill, ((0, 0), (1, 1), (1, 1)), mode="edge")
    c = pad[:, 1:-1, 1:-1]
    pairs = (
        (pad[:, 1:-1, :-2], pad[:, 1:-1, 2:]),
        (pad[:, :-2, 1:-1], pad[:, 2:, 1:-1]),
        (pad[:, :-2, :-2], pad[:, 2:, 2:]),
        (pad[:, :-2, 2:], pad[:, 2:, :-2]),
    )
    bump = np.min([c - 0.5 * (a + b) for a, b in pairs], axis=0)
    # Sharper than the PSF: for a Gaussian of this FWHM every star pixel's third-brightest
    # neighbour keeps at least 2^(-4/fwhm²) of its excess over the smooth local level (the
    # worst case, a core centred on a pixel); a cosmic ray keeps far less. Half that is the cut.
    smooth = med3 - fine
    nbrs = np.sort(np.stack([v for pair in pairs for v in pair]), axis=0)[-3]
    with np.errstate(invalid="ignore", divide="ignore"):
        r3 = (nbrs - smooth) / (c - smooth)
    w = fwhm if fwhm and np.isfinite(fwhm) else 2.0
    seeds = hit & (bump > sigma * noise) & (r3 < 0.5 * 2.0 ** (-4.0 / w**2))
    hit &= binary_dilation(seeds, structure=np.ones((1, 3, 3), bool))
    if not hit.any():
        return data, counts
    cleaned = data.copy()
    k, jy, jx = np.nonzero(hit)
    gy, gx = iy[k] + jy - half, ix[k] + jx - half
    inside = (gy >= 0) & (gy < ny) & (gx >= 0) & (gx < nx)
    cleaned[gy[inside], gx[inside]] = med3[k[inside], jy[inside], jx[inside]]
    np.add.at(counts, k[inside], 1)
    return cleaned, counts


def aperture_area(radius: float, ellipticity: float = 0.0) -> float:
    """Area (px²) of a circular or elliptical aperture."""
    return float(np.pi * radius * radius * (1.0 - ellipticity))


def measure_stars(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ap: Apertures,
    gain: float,
    *,
    raw: np.ndarray | None = None,
    saturation: float | None = None,
    bad_mask: np.ndarray | None = None,
    clean_cosmics: bool = False,
    fwhm: float | None = None,
) -> dict[str, np.ndarray]:
    """Aperture photometry of stars at (x, y): flux and error (e-) per radius, sky, peak, flags."""
    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    n, nr = len(x), len(ap.radii)
    sky, sky_std, n_sky = annulus_sky(data, x, y, *ap.annulus)
    # The peak is read before cleaning: a saturated pixel is no cosmic ray to be smoothed away.
    peak = _peak(raw if raw is not None else data, x, y, max(ap.radii))
    cosmic = np.zeros(n, int)
    if clean_cosmics:
        data, cosmic = clean_cosmic_rays(data, x, y, max(ap.radii), gain, sky_std, fwhm=fwhm)
    img = np.ascontiguousarray(data, dtype=np.float64)
    finite = np.isfinite(img)
    mask = None if finite.all() else ~finite
    if mask is not None:
        img = np.where(finite, img, 0.0)
    flux = np.full((n, nr), np.nan)
    err = np.full((n, nr), np.nan)
    area = np.zeros((n, nr))
    edge = np.zeros((n, nr), bool)
    theta = np.radians(ap.theta_deg)
    for k, r in enumerate(ap.radii):
        if ap.ellipticity > 0:
            b = r * (1.0 - ap.ellipticity)
            s, _, flag = sep.sum_ellipse(img, x, y, r, b, theta, r=1.0, mask=mask, subpix=0)
        else:
            s, _, flag = sep.sum_circle(img, x, y, r, mask=mask, subpix=0)
        a = aperture_area(r, ap.ellipticity)
        area[:, k] = a
        edge[:, k] = (flag & sep.APER_TRUNC) != 0
        net_adu = s - sky * a
        flux[:, k] = net_adu * gain
        # CCD equation with the sky noise measured in the annulus (it already holds sky photons,
        # dark and read noise), and the error of the sky median itself (Howell 2006).
        var_sky_e = (sky_std * gain) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (
                np.clip(flux[:, k], 0, None)
                + a * var_sky_e
                + a * a * var_sky_e * _MEDIAN_VAR_FACTOR / n_sky
            )
        err[:, k] = np.sqrt(var)
    saturated = peak >= saturation if saturation is not None else np.zeros(n, bool)
    hot = np.zeros(n, bool)
    if bad_mask is not None:
        hot = _peak(bad_mask.astype(np.float32), x, y, max(ap.radii)) > 0
    return {
        "flux": flux,
        "flux_err": err,
        "area": area,
        "edge": edge.any(axis=1),
        "sky": sky,
        "sky_std": sky_std,
        "n_sky": n_sky,
        "peak": peak,
        "saturated": saturated,
        "bad_pixel": hot,
        "cosmic_pixels": cosmic,
    }


def _peak(data: np.ndarray, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Largest pixel value inside radius r of each position (NaN off the frame)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) == 0:
        return np.empty(0)
    half = int(np.ceil(r))
    ny, nx = data.shape
    ix = np.clip(np.round(np.nan_to_num(x)).astype(int), -1, nx)
    iy = np.clip(np.round(np.nan_to_num(y)).astype(int), -1, ny)
    cut = _cutouts(data, ix, iy, half)
    off = np.arange(-half, half + 1, dtype=float)
    r2 = ((ix - x)[:, None, None] + off[None, None, :]) ** 2 + (
        (iy - y)[:, None, None] + off[None, :, None]
    ) ** 2
    vals = np.where(r2 <= r * r, cut, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: off the frame
        return np.nanmax(vals.reshape(len(x), -1), axis=1)
