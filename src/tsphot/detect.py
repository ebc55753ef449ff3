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
