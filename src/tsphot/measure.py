"""Measurement: recentring, exact-overlap aperture sums, annulus sky, CCD-equation errors."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import sep
from scipy.ndimage import (
    binary_dilation,
    median_filter,
    uniform_filter,
)
from scipy.spatial import cKDTree

# A Gaussian clipped at ±3σ keeps 99.73 % of its values and its std shrinks by this factor;
# dividing by it makes the clipped std an unbiased estimate of the sky noise.
_CLIP3_STD_FACTOR = 0.98664
# Variance of each sky estimator of n Gaussian values, in units of σ²/n: the mean 1, the median
# π/2, and the mode 3 med − 2 mean: 9 π/2 + 4 − 12 (cov(median, mean) = σ²/n asymptotically).
SKY_VAR_FACTOR = {"mean": 1.0, "median": np.pi / 2, "mode": 9 * np.pi / 2 + 4 - 12}


@dataclass(frozen=True)
class Apertures:
    """Aperture geometry: radii (px), sky annulus (px), ellipticity (1 − b/a) and angle (deg)."""

    radii: tuple[float, ...]
    annulus: tuple[float, float]
    ellipticity: float = 0.0
    theta_deg: float = 0.0
    # FWHM-scaled apertures: radii = radii_fwhm × FWHM and annulus = annulus_fwhm × FWHM, with
    # the FWHM of each frame when per_frame (else radii and annulus above hold for every frame).
    radii_fwhm: tuple[float, ...] = ()
    annulus_fwhm: tuple[float, float] | None = None
    per_frame: bool = False

    def scaled(self, fwhm: float) -> Apertures:
        """These apertures for a frame of the given FWHM (px): rescaled if per_frame, else same."""
        if not self.per_frame or not np.isfinite(fwhm) or fwhm <= 0 or not self.radii_fwhm:
            return self
        annulus = self.annulus
        if self.annulus_fwhm is not None:
            annulus = (self.annulus_fwhm[0] * fwhm, self.annulus_fwhm[1] * fwhm)
        return replace(self, radii=tuple(k * fwhm for k in self.radii_fwhm), annulus=annulus)


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


def all_finite(img: np.ndarray) -> bool:
    """True when no pixel is NaN or infinite (a NaN makes the maximum NaN; an infinity makes
    the maximum or minimum infinite): two reductions, no full-frame boolean mask."""
    return bool(np.isfinite(img.max()) and np.isfinite(img.min())) if img.size else True


def _cutouts(data: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int) -> np.ndarray:
    """Stack of (2 half + 1)² cutouts centred on integer pixels; NaN beyond the frame."""
    # Gathered straight from the frame: no padded float64 copy of the whole frame per call.
    ny, nx = data.shape
    off = np.arange(-half, half + 1)
    rows = np.asarray(iy)[:, None] + off[None, :]
    cols = np.asarray(ix)[:, None] + off[None, :]
    out = data[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    out = out.astype(np.float64, copy=False)
    outside = ((rows < 0) | (rows >= ny))[:, :, None] | ((cols < 0) | (cols >= nx))[:, None, :]
    if outside.any():
        out[outside] = np.nan
    return out


def nearest_pixel(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Column and row of the pixel nearest each position; -1 or the size for positions beyond
    the frame (and 0 for NaN), so that cutouts around them read as off the frame."""
    ny, nx = shape[:2]
    ix = np.clip(np.round(np.nan_to_num(x)).astype(np.int64), -1, nx)
    iy = np.clip(np.round(np.nan_to_num(y)).astype(np.int64), -1, ny)
    return ix, iy


def _centroid_geometry(box: int, fwhm: float | None) -> tuple[float, float, int, int]:
    """FWHM used (px; 3 if unknown), centroid window radius, half box, and cutout half size
    (room for the mirror images of near neighbours)."""
    fw = float(fwhm) if fwhm is not None and np.isfinite(fwhm) and fwhm > 0 else 3.0
    rw = max(1.5 * fw, 2.5)
    half = max(box // 2, 1)
    return fw, rw, half, half + 3 * int(np.ceil(rw))


CENTROID_METHODS = ("com", "gauss", "windowed")


def recentre(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    box: int = 11,
    max_shift: float = 3.0,
    min_snr: float = 20.0,
    *,
    method: str = "com",
    fwhm: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (px) of the star nearest each prediction; keeps the prediction if faint or far.

    Within a box of `box` px around the prediction, the local maximum nearest the prediction
    (not the brightest one) is taken as the star, so a brighter neighbour in the box cannot
    capture the aperture. Its centre is then measured in a window of 1.5 FWHM around it by
    `method`: "com" (centre of mass of the pixels above 3 sigma), "windowed" (Gaussian-weighted
    iteration, as SExtractor's XWIN) or "gauss" (2-D Gaussian fit, photutils.centroid_2dg).
    Neighbours in the cutout are first removed by symmetry (deblending). A result further
    than `max_shift` px from the prediction, or a star whose window holds less than `min_snr`
    sigma, leaves the prediction unchanged (third return value False).
    """
    if method not in CENTROID_METHODS:
        raise ValueError(f"centroid method {method!r}: choose one of {CENTROID_METHODS}")
    if method == "gauss":
        return recentre_reference(data, x, y, box, max_shift, min_snr, method=method, fwhm=fwhm)
    from tsphot import kernels

    x0 = np.ascontiguousarray(x, float)
    y0 = np.ascontiguousarray(y, float)
    if len(x0) == 0:
        return x0.copy(), y0.copy(), np.zeros(0, bool)
    fw, rw, half, pad = _centroid_geometry(box, fwhm)
    ix, iy = nearest_pixel(x0, y0, data.shape)
    # the centroid window (1.5 FWHM; 4 sigma for "windowed") around a centre up to 3 px away
    window = max(rw, 4.0 * fw / 2.3548) if method == "windowed" else rw
    hb = min(int(np.ceil(max(rw, 4.0 * fw / 2.3548))) + 4, pad - half)
    xc, yc, found, snr = kernels.centroids(
        data, x0, y0, ix, iy, half, pad, rw, fw, method == "windowed", window + 3.0, hb
    )
    return _accept(xc, yc, x0, y0, found, snr, min_snr, max_shift)


def _accept(
    xc: np.ndarray,
    yc: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    found: np.ndarray,
    snr: np.ndarray,
    min_snr: float,
    max_shift: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The centres kept (found, finite, bright enough and near the prediction), else the
    predictions; and which were kept."""
    with np.errstate(invalid="ignore"):
        moved = (
            found
            & np.isfinite(xc)
            & np.isfinite(yc)
            & (snr >= min_snr)
            & (np.hypot(xc - x0, yc - y0) <= max_shift)
        )
    return np.where(moved, xc, x0), np.where(moved, yc, y0), moved


def recentre_reference(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    box: int = 11,
    max_shift: float = 3.0,
    min_snr: float = 20.0,
    *,
    method: str = "com",
    fwhm: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """recentre in plain numpy: the reference the compiled kernel is tested against, and the
    "gauss" method's path.

    Centroid (px) of the star nearest each prediction; keeps the prediction if faint or far.

    Within a box of `box` px around the prediction, the local maximum nearest the prediction
    (not the brightest one) is taken as the star, so a brighter neighbour in the box cannot
    capture the aperture. Its centre is then measured in a window of 1.5 FWHM around it by
    `method`: "com" (centre of mass of the pixels above 3 sigma), "windowed" (Gaussian-weighted
    iteration, as SExtractor's XWIN) or "gauss" (2-D Gaussian fit, photutils.centroid_2dg).
    A result further than `max_shift` px from the prediction, or a star whose window holds
    less than `min_snr` sigma, leaves the prediction unchanged (third return value False).
    """
    if method not in CENTROID_METHODS:
        raise ValueError(f"centroid method {method!r}: choose one of {CENTROID_METHODS}")
    x0 = np.asarray(x, float)
    y0 = np.asarray(y, float)
    n = len(x0)
    if n == 0:
        return x0.copy(), y0.copy(), np.zeros(0, bool)
    fw, rw, half, pad = _centroid_geometry(box, fwhm)
    alive = np.isfinite(x0) & np.isfinite(y0)
    ix, iy = nearest_pixel(x0, y0, data.shape)
    cut = _cutouts(data, ix, iy, pad)
    off = np.arange(-pad, pad + 1, dtype=float)
    # Background and noise from the box's border ring: a median is robust to a neighbour there.
    ring = np.concatenate([cut[:, 0, :], cut[:, -1, :], cut[:, 1:-1, 0], cut[:, 1:-1, -1]], axis=1)
    bg = row_nanmedian(ring)  # NaN for stars off the frame (all-NaN rings)
    with np.errstate(invalid="ignore"):
        noise = 1.4826 * row_nanmedian(np.abs(ring - bg[:, None])) + 1e-6
    sub = cut - bg[:, None, None]
    fill = np.where(np.isfinite(sub), sub, 0.0)
    # Peaks of the 3x3-smoothed image above 3 sigma of the smoothed noise (noise / 3).
    smooth = uniform_filter(fill, size=(1, 3, 3), mode="constant")
    peaks = (smooth == _max3x3(smooth)) & (smooth > noise[:, None, None])
    # The peak nearest the prediction within the box (which lies within `half` px of the
    # cutout's centre: the prediction is within 0.5 px of that pixel)
    c = slice(pad - half, pad + half + 1)
    px = off[None, None, c] + (ix - x0)[:, None, None]  # offsets from the prediction
    py = off[None, c, None] + (iy - y0)[:, None, None]
    in_box = (np.abs(px) <= half) & (np.abs(py) <= half)
    d2 = np.where(peaks[:, c, c] & in_box, px**2 + py**2, np.inf).reshape(n, -1)
    best = np.argmin(d2, axis=1)
    found = alive & np.isfinite(d2[np.arange(n), best])
    jy, jx = np.unravel_index(best, (2 * half + 1, 2 * half + 1))
    jy, jx = jy + pad - half, jx + pad - half
    # Star centre in cutout coordinates (pixel index), refined by the chosen method.
    cx, cy = jx.astype(float), jy.astype(float)
    deb = np.flatnonzero(found & (peaks.reshape(n, -1).sum(axis=1) > 1))
    if len(deb):
        # Only pixels this far from the peak are read below: the centroid window (1.5 FWHM;
        # 4 sigma for "windowed"; a square box for "gauss") around a centre up to 3 px away.
        window = {"com": rw, "windowed": max(rw, 4.0 * fw / 2.3548)}.get(
            method, np.sqrt(2.0) * (np.ceil(rw) + 0.5)
        )
        reach = window + 3.0
        fill[deb] = _isolate(fill[deb], peaks[deb], jx[deb], jy[deb], reach)
    # The centroid windows lie near the peak: work on a box of the peak, 4 px wider than the
    # largest window on each side (the same centres unless one wanders further than that).
    hb = min(int(np.ceil(max(rw, 4.0 * fw / 2.3548))) + 4, pad - half)
    ox0 = np.clip(jx - hb, 0, 2 * (pad - hb))
    oy0 = np.clip(jy - hb, 0, 2 * (pad - hb))
    span = np.arange(2 * hb + 1)
    win = fill[
        np.arange(n)[:, None, None],
        (oy0[:, None] + span)[:, :, None],
        (ox0[:, None] + span)[:, None, :],
    ]
    gy, gx = np.mgrid[0 : 2 * hb + 1, 0 : 2 * hb + 1].astype(float)
    cx, cy = cx - ox0, cy - oy0
    if method == "windowed":
        sig2 = (fw / 2.3548) ** 2
        for _ in range(10):
            r2 = (gx[None] - cx[:, None, None]) ** 2 + (gy[None] - cy[:, None, None]) ** 2
            w = np.where(r2 <= (4.0**2) * sig2, np.exp(-0.5 * r2 / sig2), 0.0) * win
            s = w.sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                dx = 2.0 * (w * (gx[None] - cx[:, None, None])).sum(axis=(1, 2)) / s
                dy = 2.0 * (w * (gy[None] - cy[:, None, None])).sum(axis=(1, 2)) / s
            ok = np.isfinite(dx) & np.isfinite(dy) & (s > 0)
            dx, dy = np.where(ok, np.clip(dx, -1, 1), 0.0), np.where(ok, np.clip(dy, -1, 1), 0.0)
            cx, cy = cx + dx, cy + dy
            if np.all(np.hypot(dx, dy) < 1e-4):
                break
    else:
        for _ in range(3):  # centre of mass, the window following the estimate
            r2 = (gx[None] - cx[:, None, None]) ** 2 + (gy[None] - cy[:, None, None]) ** 2
            w = np.where((r2 <= rw * rw) & (win > 3 * noise[:, None, None]), win, 0.0)
            s = w.sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                ncx = (w * gx[None]).sum(axis=(1, 2)) / s
                ncy = (w * gy[None]).sum(axis=(1, 2)) / s
            ok = s > 0
            cx, cy = np.where(ok, ncx, cx), np.where(ok, ncy, cy)
        if method == "gauss":  # fitting is slow: only stars bright enough to be trusted
            fit = found & (_window_snr(win, cx, cy, gx, gy, rw, noise) >= min_snr)
            cx, cy = _gauss_centres(fill, cx + ox0, cy + oy0, rw, fit)
            cx, cy = cx - ox0, cy - oy0
    # Signal-to-noise of the star in its window decides whether to trust the centre at all.
    snr = _window_snr(win, cx, cy, gx, gy, rw, noise)
    cx, cy = cx + ox0, cy + oy0
    return _accept(ix - pad + cx, iy - pad + cy, x0, y0, found, snr, min_snr, max_shift)


def _window_snr(
    fill: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    rw: float,
    noise: np.ndarray,
) -> np.ndarray:
    """Signal-to-noise of the background-subtracted light within rw of each centre."""
    r2 = (gx[None] - cx[:, None, None]) ** 2 + (gy[None] - cy[:, None, None]) ** 2
    win = r2 <= rw * rw
    signal = np.where(win, fill, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return signal / (noise * np.sqrt(win.sum(axis=(1, 2))))


def _isolate(
    img: np.ndarray, peaks: np.ndarray, jx: np.ndarray, jy: np.ndarray, reach: float
) -> np.ndarray:
    """The cutouts with every other star's light removed around the star peaking at (jx, jy).

    A neighbour's light is estimated by symmetry (as the SDSS deblender does): its
    light at a pixel equals its light at the mirror pixel through its centre, which lies on the
    far side, away from our star. Pixels nearer another peak than ours are then set to zero.
    Only pixels within `reach` px of each star's peak are kept (others are set to zero), so
    all stars and all their neighbours are done in one interpolation.
    """
    m, size = img.shape[0], img.shape[1]
    k, qy, qx = np.nonzero(peaks)
    other = (qy != jy[k]) | (qx != jx[k])
    k, qy, qx = k[other], qy[other], qx[other]
    # sub-pixel centre of each neighbour from a parabola through its peak row and column
    cxq, cyq = qx.astype(float), qy.astype(float)
    for centre, along, (lo, hi) in (
        (cxq, qx, ((k, qy, qx - 1), (k, qy, qx + 1))),
        (cyq, qy, ((k, qy - 1, qx), (k, qy + 1, qx))),
    ):
        inner = (along > 0) & (along < size - 1)
        a = img[lo[0], lo[1].clip(0, size - 1), lo[2].clip(0, size - 1)]
        c = img[hi[0], hi[1].clip(0, size - 1), hi[2].clip(0, size - 1)]
        b = img[k, qy, qx]
        den = a - 2 * b + c
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.where(inner & (den < 0), 0.5 * (a - c) / np.where(den < 0, den, -1.0), 0.0)
        centre += step
    vk, vy, vx = k, qy, qx  # every other peak, for the Voronoi cut below
    # A neighbour whose mirror image of the star's disc falls wholly off the cutout takes no
    # light from it (mirror pixels beyond the edge count as 0): left out of the interpolation.
    my, mx = 2 * cyq - jy[k], 2 * cxq - jx[k]
    gap = np.hypot(np.clip(-my, 0, None) + np.clip(my - (size - 1), 0, None),
                   np.clip(-mx, 0, None) + np.clip(mx - (size - 1), 0, None))  # fmt: skip
    near = gap <= reach + 1.0
    k, qy, qx, cxq, cyq = k[near], qy[near], qx[near], cxq[near], cyq[near]
    # the pixels of each star's disc (offsets from its peak), inside the cutout
    r = int(np.ceil(reach))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = oy**2 + ox**2 <= reach * reach
    oy, ox = oy[disc], ox[disc]
    py = jy[:, None] + oy[None, :]  # (m, P)
    px = jx[:, None] + ox[None, :]
    valid = (py >= 0) & (py < size) & (px >= 0) & (px < size)
    py, px = py.clip(0, size - 1), px.clip(0, size - 1)
    own = img[np.arange(m)[:, None], py, px]  # (m, P)
    # mirror of every disc pixel through every neighbour of the same star
    my = 2 * cyq[:, None] - py[k]  # (N, P)
    mx = 2 * cxq[:, None] - px[k]
    kept = own.copy()
    if len(k):
        # Only pixels with light of their own lose any (min(mirror, own) clipped at 0): the
        # mirror is interpolated for those alone.
        pos = own[k] > 0
        light = np.zeros(my.shape)
        rows = np.broadcast_to(k[:, None], my.shape)[pos]
        light[pos] = np.clip(
            np.minimum(_bilinear(img, rows, my[pos], mx[pos]), own[k][pos]), 0, None
        )
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])  # k is sorted (np.nonzero's)
        kept[k[starts]] -= np.add.reduceat(light, starts, axis=0)
    # Voronoi: disc pixels nearer another peak than ours carry no light of our star
    d_own = oy**2 + ox**2
    nearest = np.full(own.shape, np.inf)
    if len(vk):
        d = (py[vk] - vy[:, None]) ** 2 + (px[vk] - vx[:, None]) ** 2  # (other peaks, P)
        starts = np.flatnonzero(np.r_[True, vk[1:] != vk[:-1]])  # vk is sorted too
        nearest[vk[starts]] = np.minimum.reduceat(d, starts, axis=0)
    kept[(nearest < d_own[None, :]) | ~valid] = 0.0
    out = np.zeros_like(img)
    rows = np.broadcast_to(np.arange(m)[:, None], py.shape)
    out[rows[valid], py[valid], px[valid]] = kept[valid]
    return out


def _bilinear(img: np.ndarray, k: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of the stack img at (k, y, x) with k an index per row of y and x;
    0 beyond the edges (scipy's map_coordinates, order 1, mode "constant", without its cost)."""
    size_y, size_x = img.shape[1:]
    inside = (y >= 0) & (y <= size_y - 1) & (x >= 0) & (x <= size_x - 1)
    y0 = np.clip(np.floor(y), 0, max(size_y - 2, 0)).astype(int)
    x0 = np.clip(np.floor(x), 0, max(size_x - 2, 0)).astype(int)
    fy, fx = y - y0, x - x0
    kk = k[:, None] if y.ndim == 2 else k
    y1, x1 = np.minimum(y0 + 1, size_y - 1), np.minimum(x0 + 1, size_x - 1)
    val = (img[kk, y0, x0] * (1 - fx) + img[kk, y0, x1] * fx) * (1 - fy) + (
        img[kk, y1, x0] * (1 - fx) + img[kk, y1, x1] * fx
    ) * fy
    return np.where(inside, val, 0.0)


def _max3x3(img: np.ndarray) -> np.ndarray:
    """3×3 maximum filter of each image of a stack, 0 beyond the edges (as scipy's
    maximum_filter, size (1, 3, 3), mode "constant")."""
    rows = img.copy()  # maxima along y, then x, in place: no padded copy
    np.maximum(rows[:, 1:], img[:, :-1], out=rows[:, 1:])
    np.maximum(rows[:, :-1], img[:, 1:], out=rows[:, :-1])
    out = rows.copy()
    np.maximum(out[:, :, 1:], rows[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], rows[:, :, 1:], out=out[:, :, :-1])
    for edge in (out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1]):  # the 0 beyond the edges
        np.maximum(edge, 0, out=edge)
    return out


def _gauss_centres(
    fill: np.ndarray, cx: np.ndarray, cy: np.ndarray, rw: float, found: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """2-D Gaussian fit (photutils) in a window around each first guess, in cutout pixels."""
    from photutils.centroids import centroid_2dg

    cx, cy = cx.copy(), cy.copy()
    h = int(np.ceil(rw))
    size = fill.shape[1]
    for i in np.flatnonzero(found):
        x0, y0 = round(cx[i]), round(cy[i])
        xa, xb = max(x0 - h, 0), min(x0 + h + 1, size)
        ya, yb = max(y0 - h, 0), min(y0 + h + 1, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy fitting warnings on poor fits
            try:
                gx, gy = centroid_2dg(fill[i, ya:yb, xa:xb])
            except Exception:  # a failed fit keeps the centre-of-mass estimate
                continue
        if np.isfinite(gx) and np.isfinite(gy) and np.hypot(xa + gx - cx[i], ya + gy - cy[i]) < h:
            cx[i], cy[i] = xa + gx, ya + gy
    return cx, cy


SKY_METHODS = ("median", "mean", "mode")


def annulus_sky(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    *,
    method: str = "median",
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped sky (ADU/px) in an annulus, its noise per pixel and the pixel count, per star.

    `method` is the estimator of the clipped pixels: "median", "mean" or "mode" (Pearson's
    3 median - 2 mean, robust where faint stars skew the distribution). Pixels within
    `mask_radius` px of any position in `mask_xy` (other stars) are left out before clipping;
    a mask position within 1.5 px of the star itself is ignored.
    """
    stats = annulus_stats(data, x, y, r_in, r_out, mask_xy=mask_xy, mask_radius=mask_radius)
    if method not in SKY_METHODS:
        raise ValueError(f"sky method {method!r}: choose one of {SKY_METHODS}")
    return stats[method], stats["std"], stats["count"]


def mask_radius_for(
    peak: np.ndarray, noise: float, fwhm: float, beta: float = 2.5, max_fwhm: float = 8.0
) -> np.ndarray:
    """Radius (px) where a star of this peak (ADU above sky) falls to half the sky noise.

    A Moffat profile of power `beta` (2.5: heavier wings than most seeing, so the mask errs
    large) and the frame's FWHM; at least 1.5 FWHM and at most `max_fwhm` FWHM.
    """
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    ratio = np.clip(np.asarray(peak, float) / (0.5 * max(noise, 1e-9)), 1.0, None)
    r = alpha * np.sqrt(ratio ** (1.0 / beta) - 1.0)
    return np.clip(np.nan_to_num(r, nan=1.5 * fwhm), 1.5 * fwhm, max_fwhm * fwhm)


def annulus_stats(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    *,
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> dict[str, np.ndarray]:
    """Sigma-clipped annulus statistics per star: median, mean, mode, std (ADU), count, masked.

    `mask_radius` (px) is one radius for every masking star in `mask_xy`, or one per star.
    """
    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    ix, iy = nearest_pixel(x, y, data.shape)
    mxy = np.asarray(mask_xy if mask_xy is not None else np.empty((0, 2)), float).reshape(-1, 2)
    mrad = np.ascontiguousarray(np.broadcast_to(np.asarray(mask_radius, float), (len(mxy),)))
    from tsphot import kernels  # (numba: imported when first measuring, not with the CLI)

    img = data if data.dtype in (np.float32, np.float64) else data.astype(np.float64)
    vals, count, masked = kernels.ring_values(
        img, x, y, ix, iy, float(r_in), float(r_out),
        np.ascontiguousarray(mxy[:, 0]), np.ascontiguousarray(mxy[:, 1]), mrad,
    )  # fmt: skip
    # numpy's sort (vectorised) is several times faster than numba's on these rows
    # (sorted in the frame's type, float32 the faster; the arithmetic in float64)
    srt = np.sort(vals[:, : max(int(count.max(initial=0)), 1)], axis=1).astype(np.float64)
    med, mean, std, count = kernels.clip_sorted(srt, count, 3.0, 5)
    std = std / _CLIP3_STD_FACTOR
    mode = 3.0 * med - 2.0 * mean
    few = count < 10
    for arr in (med, mean, mode, std):
        arr[few] = np.nan
    return {"median": med, "mean": mean, "mode": mode, "std": std, "count": count, "masked": masked}


def annulus_stats_reference(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    *,
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> dict[str, np.ndarray]:
    """annulus_stats in plain numpy: the reference the compiled kernel is tested against."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    if n == 0:
        e = np.empty(0)
        z = np.zeros(0, int)
        return {"median": e, "mean": e, "mode": e, "std": e, "count": z, "masked": z}
    half = int(np.ceil(r_out)) + 1
    ny, nx = data.shape
    ix, iy = nearest_pixel(x, y, data.shape)
    # Only the box's pixels that can fall in a ring: within the largest distance of a star from
    # its pixel (0.71 px, more for stars off the frame) of the ring around that pixel
    oy, ox = np.mgrid[-half : half + 1, -half : half + 1]
    rr = np.hypot(oy, ox)
    with np.errstate(invalid="ignore"):
        d = np.nanmax(np.r_[np.hypot(ix - x, iy - y), 0.75]) + 1e-6
    near_ring = (rr >= r_in - d) & (rr <= r_out + d)
    oy, ox = oy[near_ring], ox[near_ring]
    gy, gx = iy[:, None] + oy[None, :], ix[:, None] + ox[None, :]
    cut = data[np.clip(gy, 0, ny - 1), np.clip(gx, 0, nx - 1)]
    if cut.dtype != np.float32:  # (float32 frames are sorted as they are: faster, same order)
        cut = cut.astype(np.float64)
    cut[(gy < 0) | (gy >= ny) | (gx < 0) | (gx >= nx)] = np.nan
    ddx = (ix - x)[:, None] + ox[None, :]
    ddy = (iy - y)[:, None] + oy[None, :]
    r2 = ddx**2 + ddy**2
    ring = (r2 >= r_in**2) & (r2 <= r_out**2)
    masked = np.zeros(n, int)
    mxy = np.asarray(mask_xy if mask_xy is not None else np.empty((0, 2)), float).reshape(-1, 2)
    mrad = np.broadcast_to(np.asarray(mask_radius, float), (len(mxy),))
    if len(mxy) and np.nanmax(mrad) > 0:
        tree = cKDTree(mxy)
        near = tree.query_ball_point(
            np.column_stack([np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)]),
            r_out + float(np.nanmax(mrad)),
        )
        # every (star, masking star) pair at once, grouped by star
        si = np.repeat(
            np.arange(n), [len(js) if np.isfinite(x[i]) else 0 for i, js in enumerate(near)]
        )
        mj = np.fromiter(
            (j for i, js in enumerate(near) if np.isfinite(x[i]) for j in js), int, len(si)
        )
        other = np.hypot(mxy[mj, 0] - x[si], mxy[mj, 1] - y[si]) > 1.5  # not the star itself
        si, mj = si[other], mj[other]
        if len(si):
            # the ring's candidate pixels within each masking star's radius
            dx = gx[si] - mxy[mj, 0, None]
            dy = gy[si] - mxy[mj, 1, None]
            hit_pairs = (dx**2 + dy**2) <= mrad[mj, None] ** 2
            starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]])
            hit = np.zeros_like(ring)
            hit[si[starts]] = np.logical_or.reduceat(hit_pairs, starts, axis=0)
            masked = (hit & ring).sum(axis=1)
            ring &= ~hit
    vals = np.where(ring, cut, np.nan)
    med, mean, std, count = clipped_stats(vals)
    std = std / _CLIP3_STD_FACTOR
    mode = 3.0 * med - 2.0 * mean
    few = count < 10
    for arr in (med, mean, mode, std):
        arr[few] = np.nan
    return {"median": med, "mean": mean, "mode": mode, "std": std, "count": count, "masked": masked}


def clipped_stats(
    vals: np.ndarray, nsigma: float = 3.0, iters: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median, mean, std (ddof 0) and count of each row's finite values, sigma-clipped about
    the median at nsigma std until nothing changes (at most iters times); NaN for empty rows.

    The values kept are always a contiguous run of the row sorted, so each row is sorted once
    and every clipping pass moves two ends along it, with the sums from cumulative sums.
    """
    n, p = vals.shape
    fin = np.isfinite(vals)
    c = fin.sum(axis=1)
    # sorted in the values' own type (float32 sorts faster), the arithmetic in float64
    srt = np.sort(np.where(fin, vals, np.inf), axis=1).astype(np.float64, copy=False)
    rows = np.arange(n)
    # shifted by a middle value of each row, so the sums of squares lose no precision
    shift = np.where(c > 0, srt[rows, np.clip((c - 1) // 2, 0, p - 1)], 0.0)
    d = np.where(np.arange(p)[None, :] < c[:, None], srt - shift[:, None], 0.0)
    s1 = np.concatenate([np.zeros((n, 1)), np.cumsum(d, axis=1)], axis=1)
    s2 = np.concatenate([np.zeros((n, 1)), np.cumsum(d * d, axis=1)], axis=1)
    lo, hi = np.zeros(n, int), c.copy()

    def stats(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
        k = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (s1[rows, hi] - s1[rows, lo]) / k
            var = np.clip((s2[rows, hi] - s2[rows, lo]) / k - mean * mean, 0, None)
        a = np.clip(lo + (k - 1) // 2, 0, p - 1)
        b = np.clip(lo + k // 2, 0, p - 1)
        med = np.where(k > 0, 0.5 * (srt[rows, a] + srt[rows, b]), np.nan)
        return med, mean + shift, np.sqrt(var), k

    for _ in range(iters):
        med, _mean, std, _ = stats(lo, hi)
        with np.errstate(invalid="ignore"):
            new_lo = np.sum(srt < (med - nsigma * std)[:, None], axis=1)
            new_hi = np.sum(srt <= (med + nsigma * std)[:, None], axis=1)
        new_lo, new_hi = np.minimum(new_lo, c), np.minimum(np.maximum(new_hi, new_lo), c)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, mean, std, k = stats(lo, hi)
    empty = k == 0
    mean[empty], std[empty] = np.nan, np.nan
    return med, mean, std, k


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
    ix, iy = nearest_pixel(x, y, data.shape)
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
    sky_method: str = "median",
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
    finite: bool | None = None,
) -> dict[str, np.ndarray]:
    """Aperture photometry of stars at (x, y): flux and error (e-) per radius, sky, peak, flags.

    The sky is the `sky_method` estimator ("median", "mean" or "mode") of the annulus pixels,
    with pixels within `mask_radius` px of the positions `mask_xy` (other stars) left out.
    `finite` says whether every pixel of data is finite, when the caller knows (else checked).
    """
    if sky_method not in SKY_METHODS:
        raise ValueError(f"sky method {sky_method!r}: choose one of {SKY_METHODS}")
    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    n, nr = len(x), len(ap.radii)
    stats = annulus_stats(data, x, y, *ap.annulus, mask_xy=mask_xy, mask_radius=mask_radius)
    sky, sky_std, n_sky = stats[sky_method], stats["std"], stats["count"]
    # The peak is read before cleaning: a saturated pixel is no cosmic ray to be smoothed away.
    peak = _peak(raw if raw is not None else data, x, y, max(ap.radii))
    cosmic = np.zeros(n, int)
    if clean_cosmics:
        data, cosmic = clean_cosmic_rays(data, x, y, max(ap.radii), gain, sky_std, fwhm=fwhm)
    # sep sums float32 pixels as it does float64 ones (same sums): no float64 copy of the frame
    img = np.ascontiguousarray(data)
    if img.dtype not in (np.float32, np.float64):
        img = img.astype(np.float64)
    mask = None
    if not (finite if finite is not None else all_finite(img)):
        finite = np.isfinite(img)
        mask = ~finite
        img = np.where(finite, img, img.dtype.type(0))
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
        # dark and read noise), and the error of the sky estimate itself (Howell 2006).
        var_sky_e = (sky_std * gain) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (
                np.clip(flux[:, k], 0, None)
                + a * var_sky_e
                + a * a * var_sky_e * SKY_VAR_FACTOR[sky_method] / n_sky
            )
        err[:, k] = np.sqrt(var)
    saturated = peak >= saturation if saturation is not None else np.zeros(n, bool)
    hot = np.zeros(n, bool)
    if bad_mask is not None:
        hot = _peak(bad_mask, x, y, max(ap.radii)) > 0  # (cutouts are read as floats)
    return {
        "flux": flux,
        "flux_err": err,
        "area": area,
        "edge": edge.any(axis=1),
        "sky": sky,
        "sky_median": stats["median"],
        "sky_mean": stats["mean"],
        "sky_mode": stats["mode"],
        "sky_std": sky_std,
        "n_sky": n_sky,
        "sky_masked": stats["masked"],
        "peak": peak,
        "saturated": saturated,
        "bad_pixel": hot,
        "cosmic_pixels": cosmic,
    }


def _peak(data: np.ndarray, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Largest pixel value inside radius r of each position (NaN off the frame)."""
    x = np.ascontiguousarray(x, float)
    y = np.ascontiguousarray(y, float)
    ix, iy = nearest_pixel(x, y, data.shape)
    from tsphot import kernels

    if data.dtype == bool:  # (a mask: its pixels as 0 and 1)
        data = data.view(np.uint8)
    return kernels.disc_max(data, x, y, ix, iy, float(r))


def peak_reference(data: np.ndarray, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """_peak in plain numpy: the reference the compiled kernel is tested against."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) == 0:
        return np.empty(0)
    half = int(np.ceil(r))
    ix, iy = nearest_pixel(x, y, data.shape)
    cut = _cutouts(data, ix, iy, half)
    off = np.arange(-half, half + 1, dtype=float)
    r2 = ((ix - x)[:, None, None] + off[None, None, :]) ** 2 + (
        (iy - y)[:, None, None] + off[None, :, None]
    ) ** 2
    vals = np.where(r2 <= r * r, cut, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: off the frame
        return np.nanmax(vals.reshape(len(x), -1), axis=1)
