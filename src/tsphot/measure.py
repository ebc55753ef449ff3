"""Measurement: recentring, exact-overlap aperture sums, sky from the annulus, CCD-equation errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

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


def recentre(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    box: int = 11,
    max_shift: float = 3.0,
    min_snr: float = 20.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre of mass above the local background in a box; keeps the prediction when too faint or too far."""
    x = np.asarray(x, float).copy()
    y = np.asarray(y, float).copy()
    moved = np.zeros(len(x), bool)
    half = box // 2
    ny, nx = data.shape
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    for i in range(len(x)):
        x0, y0 = x[i], y[i]
        xc, yc = x0, y0
        for _ in range(3):
            ix, iy = round(xc), round(yc)
            if not (half <= ix < nx - half and half <= iy < ny - half):
                break
            cut = data[iy - half : iy + half + 1, ix - half : ix + half + 1]
            edge = np.concatenate([cut[0], cut[-1], cut[1:-1, 0], cut[1:-1, -1]])
            bg = np.median(edge)
            noise = 1.4826 * np.median(np.abs(edge - bg)) + 1e-6
            w = cut - bg
            # Only pixels clearly above the noise vote, so sky noise cannot drag the centre.
            w = np.where(w > 3 * noise, w, 0.0)
            s = w.sum()
            if s <= 0 or s / (noise * np.sqrt(max((w > 0).sum(), 1))) < min_snr:
                break
            xc = ix + (w * xx).sum() / s
            yc = iy + (w * yy).sum() / s
        else:
            if np.hypot(xc - x0, yc - y0) <= max_shift:
                x[i], y[i] = xc, yc
                moved[i] = True
    return x, y, moved


def _annulus_sky(
    data: np.ndarray, x: float, y: float, r_in: float, r_out: float
) -> tuple[float, float, int]:
    """Sigma-clipped median sky (ADU/px), its noise per pixel and the number of pixels used."""
    ny, nx = data.shape
    x0, x1 = max(int(np.floor(x - r_out)), 0), min(int(np.ceil(x + r_out)) + 1, nx)
    y0, y1 = max(int(np.floor(y - r_out)), 0), min(int(np.ceil(y + r_out)) + 1, ny)
    if x1 <= x0 or y1 <= y0:
        return np.nan, np.nan, 0
    cut = data[y0:y1, x0:x1]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    vals = cut[(r2 >= r_in**2) & (r2 <= r_out**2)]
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return np.nan, np.nan, int(vals.size)
    keep = np.ones(vals.size, bool)
    for _ in range(5):
        v = vals[keep]
        med = np.median(v)
        std = v.std()
        new = np.abs(vals - med) <= 3.0 * std
        if new.sum() == keep.sum():
            break
        keep = new
    v = vals[keep]
    return float(np.median(v)), float(v.std() / _CLIP3_STD_FACTOR), int(v.size)


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
) -> dict[str, np.ndarray]:
    """Aperture photometry of stars at (x, y): flux and error (e-) per radius, sky, peak, flags."""
    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    n, nr = len(x), len(ap.radii)
    img = np.ascontiguousarray(data, dtype=np.float64)
    finite = np.isfinite(img)
    mask = None if finite.all() else ~finite
    if mask is not None:
        img = np.where(finite, img, 0.0)
    sky = np.full(n, np.nan)
    sky_std = np.full(n, np.nan)
    n_sky = np.zeros(n, int)
    for i in range(n):
        sky[i], sky_std[i], n_sky[i] = _annulus_sky(data, x[i], y[i], *ap.annulus)
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
    peak = _peak(raw if raw is not None else data, x, y, max(ap.radii))
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
    }


def _peak(data: np.ndarray, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Largest pixel value inside radius r of each position (NaN off the frame)."""
    out = np.full(len(x), np.nan)
    ny, nx = data.shape
    ri = int(np.ceil(r))
    for i in range(len(x)):
        ix, iy = round(x[i]), round(y[i])
        x0, x1 = max(ix - ri, 0), min(ix + ri + 1, nx)
        y0, y1 = max(iy - ri, 0), min(iy + ri + 1, ny)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= r * r
        vals = data[y0:y1, x0:x1][inside]
        if vals.size:
            out[i] = float(np.nanmax(vals))
    return out
