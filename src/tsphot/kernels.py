"""Compiled per-star kernels (numba): annulus pixels and statistics, peaks, frame checks.

Each kernel computes exactly what the numpy code in `measure` it replaces computes (the tests
compare them value for value); it exists because the numpy form, vectorised over a few dozen
stars, spends most of its time building index arrays and temporary stacks, not on the pixels.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def clip_sorted(
    srt: np.ndarray, count: np.ndarray, nsigma: float, iters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median, mean, std (ddof 0) and count of each row's first count[i] values (sorted),
    sigma-clipped about the median at nsigma std until nothing changes (at most iters times).

    The arithmetic of `measure.clipped_stats` (the reference), step for step: the kept values
    are a contiguous run of the sorted row, their sums differences of cumulative sums of the
    values less a middle one; the clipping bounds are found by bisection.
    """
    n = srt.shape[0]
    med = np.full(n, np.nan)
    mean = np.full(n, np.nan)
    std = np.full(n, np.nan)
    kept = np.zeros(n, np.int64)
    s1 = np.zeros(srt.shape[1] + 1)
    s2 = np.zeros(srt.shape[1] + 1)
    for r in range(n):
        c = count[r]
        if c == 0:
            continue
        v = srt[r]
        shift = v[(c - 1) // 2]
        for i in range(c):
            d = (v[i]) - shift
            s1[i + 1] = s1[i] + d
            s2[i + 1] = s2[i] + d * d
        lo, hi = 0, c
        for it in range(iters + 1):
            k = hi - lo
            if k > 0:
                m = (s1[hi] - s1[lo]) / k
                var = (s2[hi] - s2[lo]) / k - m * m
                sd = np.sqrt(var) if var > 0 else 0.0
                md = 0.5 * ((v[lo + (k - 1) // 2]) + (v[lo + k // 2]))
            else:
                m = sd = md = np.nan
            if it == iters:
                break
            low, high = md - nsigma * sd, md + nsigma * sd
            new_lo = np.searchsorted(v[:c], low, side="left")  # values < low
            new_hi = np.searchsorted(v[:c], high, side="right")  # values <= high
            if not low == low:  # NaN bounds keep nothing, as the comparisons do
                new_lo = 0
            if not high == high:
                new_hi = 0
            new_hi = max(new_hi, new_lo)
            if new_lo == lo and new_hi == hi:
                break
            lo, hi = new_lo, new_hi
        k = hi - lo
        kept[r] = k
        if k > 0:
            med[r], mean[r], std[r] = md, m + shift, sd
    return med, mean, std, kept


@njit(cache=True, nogil=True)
def ring_values(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    r_in: float,
    r_out: float,
    mask_x: np.ndarray,
    mask_y: np.ndarray,
    mask_r: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each star's annulus pixels (rows padded with +inf), their count, and the count masked.

    (ix, iy) is each star's nearest pixel; pixels whose centre lies between r_in and r_out of
    (x, y) are the ring; those within mask_r of a masking star (not the star itself: one
    within 1.5 px) are left out, as are pixels off the frame or not finite.
    """
    n = len(x)
    ny, nx = data.shape
    half = int(np.ceil(r_out)) + 1
    size = 2 * half + 1
    vals = np.full((n, size * size), np.inf, data.dtype)
    count = np.zeros(n, np.int64)
    masked = np.zeros(n, np.int64)
    hitmap = np.zeros((size, size), np.bool_)
    near = np.empty(len(mask_x), np.int64)
    rmax = 0.0
    for j in range(len(mask_r)):
        if mask_r[j] > rmax:
            rmax = mask_r[j]
    r_in2, r_out2 = r_in * r_in, r_out * r_out
    for i in range(n):
        fx, fy = ix[i] - x[i], iy[i] - y[i]
        n_near = 0
        if rmax > 0 and np.isfinite(x[i]) and np.isfinite(y[i]):
            for j in range(len(mask_x)):
                d = np.hypot(mask_x[j] - x[i], mask_y[j] - y[i])
                if d > 1.5 and d <= r_out + rmax:
                    near[n_near] = j
                    n_near += 1
        # each masking star's disc drawn once on the box (not tested at every ring pixel)
        hitmap[:, :] = False
        for q in range(n_near):
            j = near[q]
            rj = mask_r[j]
            if not rj > 0:
                continue
            ya = max(int(np.floor(mask_y[j] - rj)) - iy[i], -half)
            yb = min(int(np.ceil(mask_y[j] + rj)) - iy[i], half)
            xa = max(int(np.floor(mask_x[j] - rj)) - ix[i], -half)
            xb = min(int(np.ceil(mask_x[j] + rj)) - ix[i], half)
            for oy in range(ya, yb + 1):
                dy = iy[i] + oy - mask_y[j]
                for ox in range(xa, xb + 1):
                    dx = ix[i] + ox - mask_x[j]
                    if dx * dx + dy * dy <= rj * rj:
                        hitmap[oy + half, ox + half] = True
        c = 0
        for oy in range(-half, half + 1):
            gy = iy[i] + oy
            ddy = fy + oy
            for ox in range(-half, half + 1):
                ddx = fx + ox
                r2 = ddx * ddx + ddy * ddy
                if not (r2 >= r_in2 and r2 <= r_out2):
                    continue
                if hitmap[oy + half, ox + half]:
                    masked[i] += 1
                    continue
                gx = ix[i] + ox
                if gy < 0 or gy >= ny or gx < 0 or gx >= nx:
                    continue
                val = data[gy, gx]
                if np.isfinite(val):
                    vals[i, c] = val
                    c += 1
        count[i] = c
    return vals, count, masked


@njit(cache=True, nogil=True)
def disc_max(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, ix: np.ndarray, iy: np.ndarray, r: float
) -> np.ndarray:
    """Largest value (NaN left out) of the pixels within r of each (x, y); NaN off the frame."""
    n = len(x)
    ny, nx = data.shape
    half = int(np.ceil(r))
    out = np.full(n, np.nan)
    r2max = r * r
    for i in range(n):
        fx, fy = ix[i] - x[i], iy[i] - y[i]
        best = -np.inf
        found = False
        for oy in range(-half, half + 1):
            gy = iy[i] + oy
            if gy < 0 or gy >= ny:
                continue
            ddy = fy + oy
            for ox in range(-half, half + 1):
                gx = ix[i] + ox
                if gx < 0 or gx >= nx:
                    continue
                ddx = fx + ox
                if ddx * ddx + ddy * ddy <= r2max:
                    val = float(data[gy, gx])
                    if not np.isnan(val):  # (an infinity counts, as np.nanmax has it)
                        found = True
                        if val > best:
                            best = val
        if found:
            out[i] = best
    return out


@njit(cache=True, nogil=True)
def finite_range(img: np.ndarray) -> tuple[int, float, float]:
    """Number of pixels that are NaN or infinite, and the least and greatest finite values."""
    bad = 0
    lo, hi = np.inf, -np.inf
    flat = img.ravel()
    for k in range(flat.size):
        v = flat[k]
        if np.isfinite(v):
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        else:
            bad += 1
    return bad, float(lo), float(hi)


def warm() -> None:
    """Compile (or load from numba's cache) every kernel for the pixel types tsphot measures."""
    x = np.array([8.0, 30.0])
    i = np.array([8, 30], np.int64)
    none = np.zeros(0)
    for dtype in (np.float32, np.float64):
        img = np.ones((40, 40), dtype)
        vals, count, _ = ring_values(img, x, x, i, i, 3.0, 6.0, none, none, none)
        clip_sorted(np.sort(vals, axis=1), count, 3.0, 5)
        disc_max(img, x, x, i, i, 3.0)
        finite_range(img)
    disc_max(np.zeros((40, 40), np.uint8), x, x, i, i, 3.0)
