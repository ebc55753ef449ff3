"""What the web page shows before and after a run: the reference frame (the exposure the pipeline
will take as its reference: the first usable one by mid-exposure time), its stars (position,
FWHM, peak, saturated) and zscaled pictures of a frame or a cut-out of one, as PNG.

Pixels are the raw ADU of the file: a picture is for placing apertures, not for measuring."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from tsphot import detect, ingest
from tsphot.calibrate import split_by_kind
from tsphot.errors import InputError

MAX_DISPLAY = 2048  # px: a larger frame is shown binned by an integer factor
MAX_STARS = 1000
MIN_FWHM = 1.9  # px (3 pixels above half the peak): sharper ones are hot pixels, cosmic rays


def reference_frame(paths: list[str]) -> tuple[int, ingest.FrameInfo]:
    """The index (in ``paths``) and header of the exposure the pipeline starts from: the first
    science exposure by mid-exposure time whose header is usable."""
    infos = [ingest.read_header(p) for p in paths]
    science, _ = split_by_kind(infos)
    ordered = [f for f in ingest.order_frames(science) if f.status == "ok"]
    if not ordered:
        why = "; ".join(f"{f.path.rsplit('/', 1)[-1]}: {f.reason}" for f in infos[:3] if f.reason)
        raise InputError(
            "no usable science exposure among the files" + (f" ({why})" if why else "")
        )
    first = ordered[0]
    return paths.index(first.path), first


def display_bin(shape: tuple[int, int]) -> int:
    """The integer binning that brings a frame's longest side to MAX_DISPLAY px or less."""
    return max(1, math.ceil(max(shape) / MAX_DISPLAY))


def zscale_png(data: np.ndarray, bin_: int = 1) -> tuple[bytes, float, float]:
    """An 8-bit greyscale PNG of the image (binned by bin_, zscale stretch, row 0 at the top as
    in numpy and FITS viewers' pixel coordinates) and the zscale limits (ADU)."""
    from astropy.visualization import ZScaleInterval
    from PIL import Image  # pillow comes with matplotlib, a dependency of tsphot

    img = np.asarray(data, dtype=np.float32)
    if bin_ > 1:
        ny, nx = (img.shape[0] // bin_) * bin_, (img.shape[1] // bin_) * bin_
        img = img[:ny, :nx].reshape(ny // bin_, bin_, nx // bin_, bin_).mean(axis=(1, 3))
    finite = np.isfinite(img)
    if not finite.any():
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in ZScaleInterval().get_limits(img[finite]))
        if not hi > lo:
            hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    buf = io.BytesIO()
    Image.fromarray((scaled * 255 + 0.5).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue(), lo, hi


def stars(data: np.ndarray, saturation: float, nsigma: float = 5.0) -> dict[str, Any]:
    """Detected stars of a frame (brightest first): position (0-based px), FWHM (px), peak
    (ADU, the raw maximum within 2 px) and whether it is saturated."""
    src = detect.find_sources(data, nsigma, saturation=saturation, max_sources=MAX_STARS)
    # each star's FWHM from the area above half its peak, FWHM = 2 sqrt(area / π): the measure
    # detect.py uses (second moments overestimate it in a star's wings)
    back, _, _ = detect.background(data)
    fwhm = 2.0 * np.sqrt(detect.half_max_area(data - back, src.x, src.y) / np.pi)
    ny, nx = data.shape
    out = []
    for i in range(len(src)):
        if not fwhm[i] >= MIN_FWHM:  # a hot pixel or cosmic ray of a raw frame, not a star
            continue
        ix, iy = round(float(src.x[i])), round(float(src.y[i]))
        box = data[max(iy - 2, 0) : min(iy + 3, ny), max(ix - 2, 0) : min(ix + 3, nx)]
        peak = float(np.nanmax(box)) if box.size else float("nan")
        out.append(
            {
                "x": round(float(src.x[i]), 2),
                "y": round(float(src.y[i]), 2),
                "fwhm": round(float(fwhm[i]), 2) if np.isfinite(fwhm[i]) else None,
                "peak": round(peak, 1) if math.isfinite(peak) else None,
                # the pipeline's own rule (measure.py): a peak at or above the saturation level
                "saturated": bool(math.isfinite(peak) and peak >= saturation),
            }
        )
    # the frame's FWHM: median of its bright unsaturated stars' (a raw frame's hot pixels and
    # cosmic rays make the detection's own estimate too small)
    good = [s["fwhm"] for s in out[:50] if not s["saturated"]]
    frame_fwhm = float(np.median(good)) if good else src.fwhm
    return {
        "fwhm": round(frame_fwhm, 2) if math.isfinite(frame_fwhm) else None,
        "background": round(src.background, 1),
        "stars": out,
    }


def cutout(data: np.ndarray, x: float, y: float, half: int) -> tuple[np.ndarray, int, int]:
    """The box of data around (x, y), clipped to the frame, and its lower-left corner (x0, y0)."""
    ny, nx = data.shape
    ix, iy = round(x), round(y)
    x0, y0 = max(ix - half, 0), max(iy - half, 0)
    x1, y1 = min(ix + half + 1, nx), min(iy + half + 1, ny)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"({x:.1f}, {y:.1f}) px is outside the frame ({nx}x{ny} px)")
    return data[y0:y1, x0:x1], x0, y0
