"""Compiled kernels (numba): annulus statistics, centroids, aperture peaks, bright stars.

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
                # a disc reaching no pixel between r_in and r_out of the star changes nothing
                # (one wholly inside the hole, or beyond the ring): not drawn
                if (
                    d > 1.5
                    and d <= r_out + rmax
                    and d - mask_r[j] <= r_out + 1e-6
                    and d + mask_r[j] >= r_in - 1e-6
                ):
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
def _select(a: np.ndarray, n: int, kth: int) -> float:
    """The kth smallest of a[:n] (Wirth's selection; a[:n] is reordered around it)."""
    lo, hi = 0, n - 1
    while lo < hi:
        x = a[kth]
        i, j = lo, hi
        while True:
            while a[i] < x:
                i += 1
            while x < a[j]:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
            if i > j:
                break
        if j < kth:
            lo = i
        if kth < i:
            hi = j
    return a[kth]


@njit(cache=True, nogil=True)
def _median_finite(v: np.ndarray, work: np.ndarray) -> float:
    """Median of the finite values of v (NaN if none), as measure.row_nanmedian has it."""
    c = 0
    for x in v:
        if np.isfinite(x):
            work[c] = x
            c += 1
    if c == 0:
        return np.nan
    a = _select(work, c, (c - 1) // 2)
    if c % 2:
        return a
    b = np.inf  # the next value up: the least of those the selection left above it
    for i in range((c - 1) // 2 + 1, c):
        if work[i] < b:
            b = work[i]
    return 0.5 * (a + b)


@njit(cache=True, nogil=True)
def _smooth3(img: np.ndarray, tmp: np.ndarray, out: np.ndarray) -> None:
    """3x3 mean into out, 0 beyond the edges: a running sum along y, then along x, as scipy's
    uniform_filter computes it (the same values within 1e-15)."""
    s = img.shape[0]
    for line in range(s):  # along y, column by column
        acc = 0.0 + img[0, line]
        if s > 1:
            acc += img[1, line]
        acc /= 3.0
        tmp[0, line] = acc
        for k in range(1, s):
            hi = img[k + 1, line] if k + 1 < s else 0.0
            lo = img[k - 2, line] if k >= 2 else 0.0
            acc += (hi - lo) / 3.0
            tmp[k, line] = acc
    for line in range(s):  # along x, row by row
        acc = 0.0 + tmp[line, 0]
        if s > 1:
            acc += tmp[line, 1]
        acc /= 3.0
        out[line, 0] = acc
        for k in range(1, s):
            hi = tmp[line, k + 1] if k + 1 < s else 0.0
            lo = tmp[line, k - 2] if k >= 2 else 0.0
            acc += (hi - lo) / 3.0
            out[line, k] = acc


@njit(cache=True, nogil=True)
def _isolate_one(
    img: np.ndarray, py_all: np.ndarray, px_all: np.ndarray, jx: int, jy: int, reach: float
) -> np.ndarray:
    """The cutout with every other star's light removed around the star peaking at (jx, jy):
    `measure._isolate` for one star (mirror deblending, then the Voronoi cut)."""
    size = img.shape[0]
    m = len(py_all)
    qy = np.empty(m, np.int64)
    qx = np.empty(m, np.int64)
    n = 0
    for q in range(m):
        if py_all[q] != jy or px_all[q] != jx:
            qy[n], qx[n] = py_all[q], px_all[q]
            n += 1
    # sub-pixel centre of each neighbour from a parabola through its peak row and column
    cxq = np.empty(n)
    cyq = np.empty(n)
    for q in range(n):
        b = img[qy[q], qx[q]]
        a = img[qy[q], min(max(qx[q] - 1, 0), size - 1)]
        c = img[qy[q], min(max(qx[q] + 1, 0), size - 1)]
        den = a - 2 * b + c
        step = 0.0
        if 0 < qx[q] < size - 1 and den < 0:
            step = 0.5 * (a - c) / den
        cxq[q] = qx[q] + step
        a = img[min(max(qy[q] - 1, 0), size - 1), qx[q]]
        c = img[min(max(qy[q] + 1, 0), size - 1), qx[q]]
        den = a - 2 * b + c
        step = 0.0
        if 0 < qy[q] < size - 1 and den < 0:
            step = 0.5 * (a - c) / den
        cyq[q] = qy[q] + step
    r = int(np.ceil(reach))
    out = np.zeros_like(img)
    for oy in range(-r, r + 1):
        for ox in range(-r, r + 1):
            d_own = oy * oy + ox * ox
            if d_own > reach * reach:
                continue
            py, px = jy + oy, jx + ox
            if py < 0 or py >= size or px < 0 or px >= size:
                continue
            own = img[py, px]
            # Voronoi: a pixel nearer another peak than ours carries none of our star's light
            nearer = False
            for q in range(n):
                if (py - qy[q]) ** 2 + (px - qx[q]) ** 2 < d_own:
                    nearer = True
                    break
            if nearer:
                continue
            light = 0.0
            if own > 0:
                for q in range(n):
                    my, mx = 2 * cyq[q] - jy, 2 * cxq[q] - jx
                    gy = max(-my, 0.0) + max(my - (size - 1), 0.0)
                    gx = max(-mx, 0.0) + max(mx - (size - 1), 0.0)
                    if np.hypot(gy, gx) > reach + 1.0:
                        continue  # its mirror of our star's disc lies wholly off the cutout
                    y = 2 * cyq[q] - py
                    x = 2 * cxq[q] - px
                    val = 0.0
                    if 0 <= y <= size - 1 and 0 <= x <= size - 1:
                        y0 = min(max(int(np.floor(y)), 0), max(size - 2, 0))
                        x0 = min(max(int(np.floor(x)), 0), max(size - 2, 0))
                        fy, fx = y - y0, x - x0
                        y1, x1 = min(y0 + 1, size - 1), min(x0 + 1, size - 1)
                        val = (img[y0, x0] * (1 - fx) + img[y0, x1] * fx) * (1 - fy) + (
                            img[y1, x0] * (1 - fx) + img[y1, x1] * fx
                        ) * fy
                    light += max(min(val, own), 0.0)
            out[py, px] = own - light
    return out


@njit(cache=True, nogil=True)
def centroids(
    data: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    half: int,
    pad: int,
    rw: float,
    fw: float,
    windowed: bool,
    reach: float,
    hb: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre (px) of the star nearest each prediction, whether one was found, and its
    signal-to-noise: `measure.recentre`'s "com" and "windowed" methods, star by star."""
    n = len(x0)
    ny, nx = data.shape
    size = 2 * pad + 1
    xc = np.full(n, np.nan)
    yc = np.full(n, np.nan)
    found = np.zeros(n, np.bool_)
    snr = np.full(n, np.nan)
    cut = np.empty((size, size))
    ring = np.empty(4 * (size - 1))
    work = np.empty_like(ring)
    tmp = np.empty((size, size))
    smooth = np.empty((size, size))
    py_all = np.empty(size * size, np.int64)
    px_all = np.empty(size * size, np.int64)
    w = 2 * hb + 1
    for i in range(n):
        for a in range(size):
            gy = iy[i] - pad + a
            for b in range(size):
                gx = ix[i] - pad + b
                if gy < 0 or gy >= ny or gx < 0 or gx >= nx:
                    cut[a, b] = np.nan
                else:
                    cut[a, b] = data[gy, gx]
        # background and noise from the box's border ring (a median: robust to a neighbour)
        k = 0
        for b in range(size):
            ring[k] = cut[0, b]
            ring[k + 1] = cut[size - 1, b]
            k += 2
        for a in range(1, size - 1):
            ring[k] = cut[a, 0]
            ring[k + 1] = cut[a, size - 1]
            k += 2
        bg = _median_finite(ring, work)
        for k in range(len(ring)):
            ring[k] = abs(ring[k] - bg)
        noise = 1.4826 * _median_finite(ring, work) + 1e-6
        fill = np.empty((size, size))
        for a in range(size):
            for b in range(size):
                v = cut[a, b] - bg
                fill[a, b] = v if np.isfinite(v) else 0.0
        _smooth3(fill, tmp, smooth)
        # peaks: 3x3 maxima of the smoothed cutout (0 beyond its edges) above the noise
        n_peaks = 0
        best, bd = -1, np.inf
        for a in range(size):
            for b in range(size):
                v = smooth[a, b]
                if not v > noise:
                    continue
                top = v
                for da in range(-1, 2):
                    for db in range(-1, 2):
                        aa, bb = a + da, b + db
                        nb = smooth[aa, bb] if 0 <= aa < size and 0 <= bb < size else 0.0
                        if nb > top:
                            top = nb
                if v != top:
                    continue
                py_all[n_peaks], px_all[n_peaks] = a, b
                n_peaks += 1
                # the peak nearest the prediction, within the box (first of equals, row-major)
                if pad - half <= a <= pad + half and pad - half <= b <= pad + half:
                    ddx = (b - pad) + (ix[i] - x0[i])
                    ddy = (a - pad) + (iy[i] - y0[i])
                    if abs(ddx) <= half and abs(ddy) <= half:
                        d2 = ddx * ddx + ddy * ddy
                        if d2 < bd:
                            bd, best = d2, a * size + b
        if best < 0 or not (np.isfinite(x0[i]) and np.isfinite(y0[i])):
            continue
        found[i] = True
        jy, jx = best // size, best % size
        if n_peaks > 1:
            fill = _isolate_one(fill, py_all[:n_peaks], px_all[:n_peaks], jx, jy, reach)
        ox0 = min(max(jx - hb, 0), 2 * (pad - hb))
        oy0 = min(max(jy - hb, 0), 2 * (pad - hb))
        win = fill[oy0 : oy0 + w, ox0 : ox0 + w]
        cx, cy = float(jx - ox0), float(jy - oy0)
        if windowed:
            sig2 = (fw / 2.3548) ** 2
            for _ in range(10):
                s = sx = sy = 0.0
                for a in range(w):
                    for b in range(w):
                        r2 = (b - cx) ** 2 + (a - cy) ** 2
                        if r2 <= 16.0 * sig2:
                            wt = np.exp(-0.5 * r2 / sig2) * win[a, b]
                            s += wt
                            sx += wt * (b - cx)
                            sy += wt * (a - cy)
                dx = dy = 0.0
                if s > 0:
                    dx = min(max(2.0 * sx / s, -1.0), 1.0)
                    dy = min(max(2.0 * sy / s, -1.0), 1.0)
                    if not (np.isfinite(dx) and np.isfinite(dy)):
                        dx = dy = 0.0
                cx, cy = cx + dx, cy + dy
                if np.hypot(dx, dy) < 1e-4:
                    break
        else:
            for _ in range(3):  # centre of mass, the window following the estimate
                s = sx = sy = 0.0
                for a in range(w):
                    for b in range(w):
                        if (b - cx) ** 2 + (a - cy) ** 2 <= rw * rw and win[a, b] > 3 * noise:
                            s += win[a, b]
                            sx += win[a, b] * b
                            sy += win[a, b] * a
                if s > 0:
                    cx, cy = sx / s, sy / s
        # signal-to-noise of the star within rw of its centre
        s = 0.0
        cnt = 0
        for a in range(w):
            for b in range(w):
                if (b - cx) ** 2 + (a - cy) ** 2 <= rw * rw:
                    s += win[a, b]
                    cnt += 1
        snr[i] = s / (noise * np.sqrt(cnt)) if cnt > 0 else np.nan
        xc[i] = ix[i] - pad + (cx + ox0)
        yc[i] = iy[i] - pad + (cy + oy0)
    return xc, yc, found, snr


@njit(cache=True, nogil=True)
def bin_mean(img: np.ndarray, b: int) -> np.ndarray:
    """Mean of each b x b block of a float32 image in numpy's order of float32 sums
    (`detect._bin`: rows first, then columns), in one pass over the frame."""
    nby, nbx = img.shape[0] // b, img.shape[1] // b
    out = np.empty((nby, nbx), np.float32)
    rows = np.empty(img.shape[1], np.float32)
    scale = np.float32(b * b)
    w = nbx * b
    for i in range(nby):
        for c in range(w):
            rows[c] = img[i * b, c]
        for k in range(1, b):  # whole rows at a time: the loop over c vectorises
            for c in range(w):
                rows[c] += img[i * b + k, c]
        for j in range(nbx):
            acc = rows[j * b]
            for k in range(1, b):
                acc = acc + rows[j * b + k]
            out[i, j] = acc / scale
    return out


@njit(cache=True, nogil=True)
def _median32(work: np.ndarray, c: int) -> np.float32:
    """np.median of the float32 values work[:c] (reordered): the middle one, or the float32
    mean of the middle two, as numpy computes it."""
    a = _select(work, c, (c - 1) // 2)
    if c % 2:
        return a
    b = work[(c - 1) // 2 + 1]
    for i in range((c - 1) // 2 + 1, c):
        if work[i] < b:
            b = work[i]
    return (a + b) / np.float32(2.0)


@njit(cache=True, nogil=True)
def cell_medians(img: np.ndarray, my: int, mx: int, sy: int, sx: int) -> np.ndarray:
    """Median of every other pixel (rows and columns) of each sy x sx cell of a float32 image
    (`detect._mesh_background`'s cells)."""
    out = np.empty((my, mx), np.float32)
    work = np.empty(((sy + 1) // 2) * ((sx + 1) // 2), np.float32)
    for i in range(my):
        for j in range(mx):
            c = 0
            for a in range(0, sy, 2):
                for b in range(0, sx, 2):
                    work[c] = img[i * sy + a, j * sx + b]
                    c += 1
            out[i, j] = _median32(work, c)
    return out


@njit(cache=True, nogil=True)
def brightest_near(
    data: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and value of the brightest pixel (NaN counts as lowest; the first of equals
    in row-major order; off the frame as NaN) within half px of each (cx, cy)."""
    n = len(cx)
    ny, nx = data.shape
    iy = np.empty(n, np.int64)
    ix = np.empty(n, np.int64)
    val = np.empty(n)
    for i in range(n):
        best, by, bx = -np.inf, 0, 0
        first = True
        for oy in range(-half, half + 1):
            for ox in range(-half, half + 1):
                gy, gx = cy[i] + oy, cx[i] + ox
                v = np.nan
                if 0 <= gy < ny and 0 <= gx < nx:
                    v = data[gy, gx]
                key = -np.inf if np.isnan(v) else float(v)
                if first or key > best:
                    best, by, bx, first = key, oy, ox, False
        iy[i], ix[i] = cy[i] + by, cx[i] + bx
        gy, gx = iy[i], ix[i]
        val[i] = data[gy, gx] if 0 <= gy < ny and 0 <= gx < nx else np.nan
    return iy, ix, val


@njit(cache=True, nogil=True)
def int16be_to_float32(raw: np.ndarray, bzero: float) -> np.ndarray:
    """float32 values of big-endian 16-bit FITS pixels (given as native uint16 words) plus
    BZERO, in one pass: the values numpy's astype and add give (integers below 2**24 are
    exact in float32)."""
    out = np.empty(raw.size, np.float32)
    z = np.float32(bzero)
    for k in range(raw.size):
        u = raw[k]
        v = np.int32(((u >> 8) | (u << 8)) & 0xFFFF)
        if v >= 32768:
            v -= 65536
        out[k] = np.float32(v) + z
    return out


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
    disc_max(np.zeros((40, 40), np.uint8), x, x, i, i, 3.0)
    img = np.ones((40, 40), np.float32)
    cell_medians(bin_mean(img, 4), 2, 2, 5, 5)
    brightest_near(img, i, i, 3)
    int16be_to_float32(np.zeros(4, np.uint16), 32768.0)
    centroids(img, x, x, i, i, 5, 11, 2.5, 3.0, False, 5.5, 9)
