"""Detection: sky background, point sources and the frame's FWHM."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sep

# sep keeps a global pixel-stack limit; a crowded 4k frame needs more than the default.
sep.set_extract_pixstack(300_000)
sep.set_sub_object_limit(1024)


@dataclass
class Sources:
    """Detected sources of one frame (0-based pixel positions), brightest first."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  # ADU above background, isophotal
    peak: np.ndarray  # ADU above background
    fwhm: float  # px, median of unsaturated round sources
    background: float  # ADU, global median
    background_rms: float  # ADU
    # Area above half the peak (px²) over that of the frame's PSF (π FWHM²/4): about 1 for a
    # star, well below for a cosmic ray or hot pixel, above for a galaxy or a blend.
    psf_area_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def star_like(self, min_ratio: float = 0.4) -> np.ndarray:
        """Which sources are as broad as the PSF (not cosmic rays or hot-pixel clusters)."""
        # An undersampled PSF (FWHM < 2.5 px) puts a star's light in as few pixels as a
        # cosmic ray: the test cannot tell them apart there, so it keeps every source.
        if len(self.psf_area_ratio) != len(self.x) or not self.fwhm >= 2.5:
            return np.ones(len(self.x), bool)
        return ~(self.psf_area_ratio < min_ratio)

    def __len__(self) -> int:
        return len(self.x)


def background(data: np.ndarray, box: int = 64) -> tuple[np.ndarray, float, float]:
    """Smooth background map (ADU), its global median and RMS."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    bkg = sep.Background(data, bw=box, bh=box, fw=3, fh=3)
    return bkg.back(), float(bkg.globalback), float(bkg.globalrms)


def find_sources(
    data: np.ndarray,
    nsigma: float = 5.0,
    saturation: float | None = None,
    max_sources: int | None = None,
    edge: int = 5,
    mask: np.ndarray | None = None,
) -> Sources:
    """Detect point sources above nsigma × background RMS, with their FWHM."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    good = np.isfinite(data)
    if not good.all():
        data = np.where(good, data, np.float32(np.nanmedian(data)))
    bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3, mask=mask)
    sub = data - bkg.back()
    rms = float(bkg.globalrms)
    if not rms > 0:
        return Sources(*(np.empty(0) for _ in range(4)), np.nan, float(bkg.globalback), rms)
    try:
        objs = sep.extract(
            sub, nsigma, err=rms, minarea=5, mask=mask, deblend_cont=0.005, deblend_nthresh=8
        )
    except Exception:  # sep raises on pathological frames (e.g. pure cloud); treat as none found
        objs = np.empty(0, dtype=[(n, "f8") for n in ("x", "y", "flux", "peak", "a", "b", "flag")])
    ny, nx = data.shape
    keep = (
        (objs["x"] > edge)
        & (objs["x"] < nx - 1 - edge)
        & (objs["y"] > edge)
        & (objs["y"] < ny - 1 - edge)
        & (objs["a"] > 0.5)  # single hot pixels and cosmic rays are sharper than any PSF
    )
    objs = objs[keep]
    order = np.argsort(objs["flux"])[::-1]
    if max_sources:
        order = order[:max_sources]
    objs = objs[order]
    fwhm = _fwhm(objs, sub, saturation, float(bkg.globalback))
    area = half_max_area(sub, objs["x"], objs["y"])
    return Sources(
        x=np.asarray(objs["x"], float),
        y=np.asarray(objs["y"], float),
        flux=np.asarray(objs["flux"], float),
        peak=np.asarray(objs["peak"], float),
        fwhm=fwhm,
        background=float(bkg.globalback),
        background_rms=rms,
        psf_area_ratio=area / (np.pi * fwhm**2 / 4.0) if fwhm > 0 else np.full(len(area), np.nan),
    )


def half_max_area(sub: np.ndarray, x: np.ndarray, y: np.ndarray, half: int = 4) -> np.ndarray:
    """Number of pixels (px²) at or above half the local peak around each (x, y) of a
    background-subtracted image, in a box of 2·half + 1 px (NaN at the edge or no peak)."""
    ny, nx = sub.shape
    out = np.full(len(x), np.nan)
    for i, (xc, yc) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(float(xc)), round(float(yc))
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        cut = sub[iy - half : iy + half + 1, ix - half : ix + half + 1]
        peak = cut[half - 1 : half + 2, half - 1 : half + 2].max()
        if peak > 0:
            out[i] = np.count_nonzero(cut >= 0.5 * peak)
    return out


def _fwhm(objs: np.ndarray, sub: np.ndarray, saturation: float | None, back: float) -> float:
    """Median FWHM (px) of bright, round, unsaturated sources, from their half-maximum area."""
    if len(objs) == 0:
        return float("nan")
    ok = (objs["b"] / np.maximum(objs["a"], 1e-6) > 0.6) & (objs["flag"] == 0)
    if saturation is not None:
        ok &= objs["peak"] + back < 0.8 * saturation
    use = objs[ok][:30] if ok.sum() >= 3 else objs[:30]
    # Moments of the isophote underestimate the FWHM of a Moffat; the area above half the
    # peak is the FWHM's definition: FWHM = 2 sqrt(area / π).
    half = 7
    ny, nx = sub.shape
    out = []
    for o in use:
        ix, iy = round(float(o["x"])), round(float(o["y"]))
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        cut = sub[iy - half : iy + half + 1, ix - half : ix + half + 1]
        peak = cut.max()
        if peak > 0:
            out.append(2.0 * np.sqrt(np.count_nonzero(cut >= 0.5 * peak) / np.pi))
    return float(np.median(out)) if out else float("nan")


def fwhm_at(data: np.ndarray, x: np.ndarray, y: np.ndarray, box: int = 15) -> np.ndarray:
    """FWHM (px) of stars at given positions, from background-subtracted second moments."""
    out = np.full(len(x), np.nan)
    half = box // 2
    ny, nx = data.shape
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    for i, (xc, yc) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(xc), round(yc)
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        cut = data[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
        cut = cut - np.median(np.concatenate([cut[0], cut[-1], cut[:, 0], cut[:, -1]]))
        w = np.clip(cut, 0, None)
        s = w.sum()
        if s <= 0:
            continue
        mx, my = (w * xx).sum() / s, (w * yy).sum() / s
        var = (w * ((xx - mx) ** 2 + (yy - my) ** 2)).sum() / s / 2.0
        out[i] = 2.3548 * np.sqrt(max(var, 0.0))
    return out


def bright_sources(
    data: np.ndarray,
    nsigma: float = 15.0,
    saturation: float | None = None,
    max_sources: int = 150,
    binning: int = 4,
    edge: int = 5,
) -> Sources:
    """The brightest point sources (peak above nsigma × the pixel noise), found on a block-binned
    copy and measured at full resolution: positions, fluxes, sky and the frame's FWHM.

    For registering a frame a few bright stars suffice: peaks of the binned image point to them
    and only small boxes around them are measured, at a fraction of find_sources' cost (a
    background map and an extraction of every pixel). The sky is a 64-px mesh of medians of
    the binned image, as sep's, and the FWHM the same half-maximum-area estimate as find_sources'.
    """
    from scipy.ndimage import median_filter

    from tsphot.measure import _cutouts, _max3x3

    ny, nx = data.shape
    b = max(int(binning), 1)
    nby, nbx = ny // b, nx // b
    if nby < 3 or nbx < 3:
        return find_sources(data, nsigma, saturation=saturation, max_sources=max_sources)
    from tsphot import kernels

    # (the kernel repeats _bin's float32 sums in their order: the same values)
    blk = (
        kernels.bin_mean(data, b)
        if data.dtype == np.float32
        else _bin(data[: nby * b, : nbx * b], b)
    )
    bad = ~np.isfinite(blk)
    if bad.all():
        return Sources(*(np.empty(0) for _ in range(4)), np.nan, np.nan, np.nan)
    if bad.any():
        blk[bad] = np.median(blk[~bad])
    back_b, globalback = _mesh_background(blk, max(64 // b, 4), median_filter)
    # Pixel noise from every 2b-th pixel (the binned image's noise would mix in the star light)
    sample = (data[b // 2 :: 2 * b, b // 2 :: 2 * b][: nby // 2, : nbx // 2]
              - back_b[: 2 * (nby // 2) : 2, : 2 * (nbx // 2) : 2])  # fmt: skip
    sample = sample[np.isfinite(sample)]
    rms = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if not rms > 0:
        return Sources(*(np.empty(0) for _ in range(4)), np.nan, globalback, rms)
    sub_b = blk - back_b
    # Peaks of the binned image: a star whose brightest pixel stands nsigma above the sky puts
    # well over 2 sigma of the binned noise (rms / b) in its block, whatever the seeing.
    peaks = (sub_b == _max3x3(sub_b[None])[0]) & (sub_b > 2.0 * rms / b)
    cy, cx = np.nonzero(peaks)
    order = np.argsort(sub_b[cy, cx])[::-1][: 2 * max_sources]
    cy, cx = cy[order], cx[order]
    # The brightest pixel near each binned peak, then a box around it at full resolution.
    half_s = b // 2 + 2
    iy, ix, top = kernels.brightest_near(
        data, (cx * b + b // 2).astype(np.int64), (cy * b + b // 2).astype(np.int64), half_s
    )
    bg = back_b[np.clip(iy // b, 0, nby - 1), np.clip(ix // b, 0, nbx - 1)]
    bright = top - bg > nsigma * rms
    key = np.unique(iy[bright] * (nx + 2) + ix[bright])  # one per brightest pixel
    iy, ix = key // (nx + 2), key % (nx + 2)
    half = 7
    bg = back_b[np.clip(iy // b, 0, nby - 1), np.clip(ix // b, 0, nbx - 1)]
    sub = _cutouts(data, ix, iy, half) - bg[:, None, None]
    sub = np.where(np.isfinite(sub), sub, 0.0)
    peak = sub[:, half, half]
    thresh = nsigma * rms
    above = sub > thresh
    # Like sep's minarea=5: a lone hot pixel or a short cosmic-ray hit is no star to match.
    keep = (peak > thresh) & (above.sum(axis=(1, 2)) >= 5) & (peak >= sub.max(axis=(1, 2)))
    keep &= (ix > edge) & (ix < nx - 1 - edge) & (iy > edge) & (iy < ny - 1 - edge)
    ix, iy, sub, peak, bg = ix[keep], iy[keep], sub[keep], peak[keep], bg[keep]
    flux = np.where(sub > 3.0 * rms, sub, 0.0).sum(axis=(1, 2))  # isophotal, as sep's
    order = np.argsort(flux, kind="stable")[::-1][:max_sources]
    ix, iy, sub, peak, bg, flux = (a[order] for a in (ix, iy, sub, peak, bg, flux))
    area15 = np.count_nonzero(sub >= 0.5 * peak[:, None, None], axis=(1, 2))
    c = slice(half - 4, half + 5)
    area9 = np.count_nonzero(sub[:, c, c] >= 0.5 * peak[:, None, None], axis=(1, 2))
    # FWHM from the half-maximum area of the brightest unsaturated stars with no brighter
    # neighbour in their box (a blend's area is too large), as find_sources' _fwhm.
    ok = np.ones(len(ix), bool)
    if saturation is not None:
        ok &= peak + bg < 0.8 * saturation
    close = (np.abs(ix[:, None] - ix[None, :]) <= 2 * half) & (
        np.abs(iy[:, None] - iy[None, :]) <= 2 * half
    )
    ok &= ~np.tril(close, k=-1).any(axis=1)  # a brighter (earlier) source in the box
    use = np.flatnonzero(ok)[:30] if ok.sum() >= 3 else np.arange(min(len(ix), 30))
    fwhm = float(np.median(2.0 * np.sqrt(area15[use] / np.pi))) if len(use) else float("nan")
    # Centre of mass of the light within 1.5 FWHM of the brightest pixel.
    rw = max(1.5 * fwhm, 2.5) if np.isfinite(fwhm) else 2.5
    off = np.arange(-half, half + 1, dtype=float)
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    w = np.where((r2 <= rw * rw)[None] & (sub > 0), sub, 0.0)
    s = w.sum(axis=(1, 2))
    x = ix + (w * off[None, None, :]).sum(axis=(1, 2)) / s
    y = iy + (w * off[None, :, None]).sum(axis=(1, 2)) / s
    return Sources(
        x=x.astype(float),
        y=y.astype(float),
        flux=flux.astype(float),
        peak=peak.astype(float),
        fwhm=fwhm,
        background=globalback,
        background_rms=rms,
        psf_area_ratio=area9 / (np.pi * fwhm**2 / 4.0) if fwhm > 0 else np.full(len(ix), np.nan),
    )


def _bin(img: np.ndarray, b: int) -> np.ndarray:
    """Mean of each b × b block (the image's sides are multiples of b)."""
    rows = img[0::b].astype(np.float32, copy=True)
    for k in range(1, b):  # strided sums: much faster than a reshape and mean over small axes
        rows += img[k::b]
    out = rows[:, 0::b].copy()
    for k in range(1, b):
        out += rows[:, k::b]
    out /= np.float32(b * b)
    return out


def _mesh_background(img: np.ndarray, mesh: int, median_filter) -> tuple[np.ndarray, float]:
    """Smooth background of an image: medians of mesh × mesh boxes, 3×3 median-filtered and
    interpolated bilinearly between the boxes' centres; and the median of the boxes."""
    ny, nx = img.shape
    my, mx = max(ny // mesh, 1), max(nx // mesh, 1)
    sy, sx = ny // my, nx // mx
    # every other pixel of each box: its median as good, at a quarter of the cost
    if img.dtype == np.float32 and np.isfinite(img).all():
        from tsphot import kernels

        med = kernels.cell_medians(img, my, mx, sy, sx)
    else:
        cells = img[: my * sy, : mx * sx].reshape(my, sy, mx, sx)[:, ::2, :, ::2]
        med = np.median(cells.transpose(0, 2, 1, 3).reshape(my, mx, -1), axis=2)
    if my >= 3 and mx >= 3:
        med = median_filter(med, size=3, mode="nearest")

    def axis(n: int, m: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.interp(np.arange(n), (np.arange(m) + 0.5) * step - 0.5, np.arange(m, dtype=float))
        i0 = np.clip(np.floor(pos).astype(int), 0, m - 1)
        i1 = np.clip(i0 + 1, 0, m - 1)
        return i0, i1, pos - i0

    y0, y1, fy = axis(ny, my, sy)
    x0, x1, fx = axis(nx, mx, sx)
    rows = (med[:, x0] * (1 - fx) + med[:, x1] * fx).astype(np.float32)  # along x, per box row
    fy = fy.astype(np.float32)[:, None]
    return rows[y0] * (1 - fy) + rows[y1] * fy, float(np.median(med))
