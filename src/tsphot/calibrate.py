"""Calibration: master bias, dark and flat from raw frames, and their application to a frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clip

from tsphot.errors import InputError
from tsphot.ingest import read_header, read_pixels

# Median-combine rows in blocks so a hundred 4k frames never sit in memory as float64 at once.
_ROWS_PER_CHUNK = 256


@dataclass
class Masters:
    """Master calibration frames (ADU) and what they were made from."""

    bias: np.ndarray | None = None
    dark_rate: np.ndarray | None = None  # ADU per second, bias removed
    flat: np.ndarray | None = None  # normalised to median 1
    provenance: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when no master is present."""
        return self.bias is None and self.dark_rate is None and self.flat is None


def _load_stack(paths: list[str], kind: str, shape: tuple[int, int] | None) -> list[np.ndarray]:
    frames = []
    for p in paths:
        info = read_header(p)
        if info.status not in ("ok", "bad_header"):
            raise InputError(f"{kind} frame {info.reason}")
        data, _ = read_pixels(p, info.pedestal)
        if shape is not None and data.shape != shape:
            raise InputError(
                f"{kind} frame {p}: {data.shape[1]}x{data.shape[0]} px, but the science frames are "
                f"{shape[1]}x{shape[0]}; give {kind} frames of the same size and binning"
            )
        frames.append(data)
    return frames


def combine(frames: list[np.ndarray], method: str = "median", sigma: float = 3.0) -> np.ndarray:
    """Combine same-sized frames pixel by pixel, sigma-clipped median or mean, in row chunks."""
    if not frames:
        raise ValueError("nothing to combine")
    ny, nx = frames[0].shape
    out = np.empty((ny, nx), dtype=np.float32)
    for y0 in range(0, ny, _ROWS_PER_CHUNK):
        block = np.stack([f[y0 : y0 + _ROWS_PER_CHUNK] for f in frames]).astype(np.float64)
        if len(frames) >= 3:
            clipped = sigma_clip(
                block, sigma=sigma, axis=0, maxiters=3, masked=True, stdfunc="mad_std"
            )
            agg = np.ma.median(clipped, axis=0) if method == "median" else clipped.mean(axis=0)
            out[y0 : y0 + _ROWS_PER_CHUNK] = np.ma.filled(agg, np.nan)
        else:
            agg = np.median(block, axis=0) if method == "median" else block.mean(axis=0)
            out[y0 : y0 + _ROWS_PER_CHUNK] = agg
    return out


def _is_master(paths: list[str]) -> bool:
    return len(paths) == 1


def master_bias(paths: list[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Sigma-clipped median of raw bias frames (ADU)."""
    return combine(_load_stack(paths, "bias", shape), "median")


def master_dark_rate(
    paths: list[str], bias: np.ndarray | None, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Dark current per second (ADU/s): bias-subtracted darks, clipped mean, divided by exposure."""
    frames = _load_stack(paths, "dark", shape)
    rates = []
    for p, f in zip(paths, frames, strict=True):
        t = read_header(p).exptime
        if not t or not np.isfinite(t) or t <= 0:
            raise InputError(
                f"dark frame {p}: EXPTIME is {t}; a dark needs a positive exposure time"
            )
        rates.append((f - (bias if bias is not None else 0.0)) / np.float32(t))
    return combine(rates, "mean")


def master_flat(
    paths: list[str],
    bias: np.ndarray | None,
    dark_rate: np.ndarray | None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Normalised master flat: each flat calibrated and scaled to median 1, then median-combined."""
    frames = _load_stack(paths, "flat", shape)
    normed = []
    for p, f in zip(paths, frames, strict=True):
        g = f - (bias if bias is not None else 0.0)
        if dark_rate is not None:
            g = g - dark_rate * np.float32(read_header(p).exptime or 0.0)
        level = float(np.median(g))
        if not level > 0:
            raise InputError(f"flat frame {p}: median level {level:.1f} ADU is not positive")
        normed.append(g / np.float32(level))
    flat = combine(normed, "median")
    flat /= np.float32(np.nanmedian(flat))
    bad = ~np.isfinite(flat) | (flat < 0.05)
    if bad.any():
        flat[bad] = 1.0  # such pixels are flagged by the bad-pixel mask, not divided by ~0
    return flat


def read_master(path: str, shape: tuple[int, int] | None) -> np.ndarray:
    """Read one master frame written by tsphot or another tool."""
    data, _ = read_pixels(path)
    if shape is not None and data.shape != shape:
        raise InputError(
            f"master {path}: {data.shape[1]}x{data.shape[0]} px, science frames are "
            f"{shape[1]}x{shape[0]}"
        )
    return data


def build_masters(
    bias: list[str], dark: list[str], flat: list[str], shape: tuple[int, int] | None = None
) -> Masters:
    """Build (or read) the master bias, dark and flat from the given files."""
    m = Masters()
    if bias:
        m.bias = master_bias(bias, shape)
        m.provenance.append({"step": "master_bias", "files": bias, "method": "clipped median"})
    if dark:
        m.dark_rate = master_dark_rate(dark, m.bias, shape)
        m.provenance.append({"step": "master_dark", "files": dark, "method": "clipped mean / s"})
    if flat:
        m.flat = master_flat(flat, m.bias, m.dark_rate, shape)
        m.provenance.append({"step": "master_flat", "files": flat, "method": "normalised median"})
    return m


def apply(data: np.ndarray, exptime: float, masters: Masters) -> np.ndarray:
    """Calibrate one frame (ADU): subtract bias and exposure-scaled dark, divide by the flat."""
    out = data.astype(np.float32, copy=True)
    if masters.bias is not None:
        out -= masters.bias
    if masters.dark_rate is not None:
        out -= masters.dark_rate * np.float32(exptime)
    if masters.flat is not None:
        out /= masters.flat
    return out


def write_masters(masters: Masters, folder: str | Path) -> dict[str, str]:
    """Write the masters as FITS files with their provenance; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("bias", "dark_rate", "flat"):
        arr = getattr(masters, name)
        if arr is None:
            continue
        hdr = fits.Header()
        hdr["IMAGETYP"] = f"Master {name}"
        for p in masters.provenance:
            hdr.add_history(f"tsphot {p['step']}: {p['method']} of {len(p['files'])} frames")
        path = folder / f"master_{name}.fits"
        fits.PrimaryHDU(arr, header=hdr).writeto(path, overwrite=True)
        written[name] = str(path)
    return written
