"""Calibration: master bias, dark and flat, a calibration library on disk, bad-pixel masks,
overscan and trim, and the calibration of one frame with every step recorded (provenance).

Masters are combined in row chunks from a scratch stack on disk when the frames do not fit the
memory budget, so a hundred 4k flats never sit in memory at once. A library is a folder of
master FITS files and an index, ``library.json``; for each science frame the best master of
each kind is chosen (same binning and size; same filter for flats; the dark of the same
exposure time if there is one, else the nearest one scaled by exposure time; then the
nearest temperature and night) and the choice is recorded.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from tsphot.errors import InputError
from tsphot.ingest import FrameInfo, read_header, read_pixels

LIBRARY_INDEX = "library.json"
LIBRARY_FORMAT = "tsphot-calibration-library"

# Bad-pixel mask bits (uint8).
HOT, DEAD, UNSTABLE = 1, 2, 4
BAD_BITS = {"hot": HOT, "dead": DEAD, "unstable": UNSTABLE}

# Bytes of working memory per element of the (frames x rows x columns) block being combined:
# the float32 block, its deviations, a sorted copy for the spread and a boolean mask.
_BYTES_PER_ELEMENT = 16
_DEFAULT_MEMORY_MB = 512.0
# Darks of the same exposure time: within this fraction.
_SAME_EXPTIME = 0.01
# Darks within this many degrees of the frame's temperature are preferred.
_TEMP_TOLERANCE_C = 2.0


# ----------------------------------------------------------------------------- masters


@dataclass
class Masters:
    """Master calibration frames (ADU) for one science frame, and what they were made from."""

    bias: np.ndarray | None = None
    dark_rate: np.ndarray | None = None  # ADU per second, bias removed
    flat: np.ndarray | None = None  # normalised to median 1
    bad: np.ndarray | None = None  # uint8 bad-pixel bits (HOT, DEAD, UNSTABLE)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    choice: dict[str, Any] = field(default_factory=dict)  # master files chosen, and why

    @property
    def empty(self) -> bool:
        """True when no master is present."""
        return self.bias is None and self.dark_rate is None and self.flat is None

    def dark_for(self, exptime: float) -> np.ndarray:
        """The dark current of an exposure (ADU): dark_rate × exptime, kept per exposure time
        (a night has one or a few, and every frame would otherwise compute it again)."""
        key = (id(self.dark_rate), float(exptime))
        cache = self.__dict__.setdefault("_dark_cache", {})
        if key not in cache or cache[key][0] is not self.dark_rate:
            if len(cache) >= 4:
                cache.clear()
            # the master itself is kept with its product: its id cannot be reused meanwhile
            cache[key] = (self.dark_rate, self.dark_rate * np.float32(exptime))
        return cache[key][1]

    @property
    def any_bad(self) -> bool:
        """True when a bad-pixel mask is present and flags at least one pixel (kept)."""
        cache = self.__dict__.setdefault("_any_bad", {})
        if "value" not in cache or cache["of"] is not self.bad:
            cache.update(of=self.bad, value=self.bad is not None and bool(self.bad.any()))
        return cache["value"]

    def arrays(self) -> dict[str, np.ndarray]:
        """The master arrays present, by name (for an .npz file)."""
        names = ("bias", "dark_rate", "flat", "bad")
        return {k: v for k in names if (v := getattr(self, k)) is not None}


def load_masters_npz(path: str) -> Masters:
    """Masters saved with np.savez(**Masters.arrays())."""
    with np.load(path) as z:
        m = Masters(**{k: z[k] for k in ("bias", "dark_rate", "flat", "bad") if k in z})
        if "choice" in z:
            m.choice = json.loads(str(z["choice"]))
    return m


# ----------------------------------------------------------------------------- sections

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str, shape: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """FITS section '[x1:x2,y1:y2]' (1-based, inclusive) as numpy (row, column) slices."""
    m = _SECTION.match(str(text).strip())
    if not m:
        raise InputError(f"section {text!r} is not of the form [x1:x2,y1:y2] (1-based)")
    x1, x2, y1, y2 = (int(v) for v in m.groups())
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if min(x1, y1) < 1 or (shape is not None and (x2 > shape[1] or y2 > shape[0])):
        size = f" of a {shape[1]}x{shape[0]} image" if shape is not None else ""
        raise InputError(f"section {text!r} lies outside the pixels{size}")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def trim(data: np.ndarray, sections: dict[str, str]) -> np.ndarray:
    """The TRIMSEC (or DATASEC) part of a frame; the frame itself when neither is given."""
    sec = sections.get("TRIMSEC") or sections.get("DATASEC")
    if not sec:
        return data
    rows, cols = parse_section(sec, data.shape)
    return data[rows, cols]


def overscan_and_trim(
    data: np.ndarray, sections: dict[str, str], where: str = ""
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Subtract the overscan level (BIASSEC, row by row) and trim to TRIMSEC/DATASEC (ADU)."""
    steps: list[dict[str, Any]] = []
    if not sections:
        return data, steps
    try:
        if "BIASSEC" in sections:
            rows, cols = parse_section(sections["BIASSEC"], data.shape)
            strip = data[rows, cols].astype(np.float64)
            vertical = strip.shape[0] >= strip.shape[1]  # columns beside the image: per row
            level = _clipped_mean(strip if vertical else strip.T)
            # Smoothing over 15 rows keeps the readout's slow drift without the strip's noise.
            from scipy.ndimage import uniform_filter1d

            level = uniform_filter1d(level, size=min(15, level.size), mode="nearest")
            data = data.astype(np.float32, copy=True)
            if vertical:
                full = np.full(data.shape[0], np.median(level))
                full[rows] = level
                data -= full[:, None].astype(np.float32)
            else:
                full = np.full(data.shape[1], np.median(level))
                full[cols] = level
                data -= full[None, :].astype(np.float32)
            steps.append(
                {
                    "step": "subtract_overscan",
                    "biassec": sections["BIASSEC"],
                    "method": "clipped mean per "
                    + ("row" if vertical else "column")
                    + ", smoothed over 15",
                    "level_adu": round(float(np.median(level)), 3),
                }
            )
        sec = sections.get("TRIMSEC") or sections.get("DATASEC")
        if sec:
            data = trim(data, sections)
            key = "TRIMSEC" if "TRIMSEC" in sections else "DATASEC"
            steps.append({"step": "trim", key.lower(): sec})
    except InputError as exc:
        raise InputError(f"{where}: {exc}; fix the header keyword or remove it") from None
    return data, steps


def _clipped_mean(a: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Mean of each row after clipping values beyond sigma robust deviations of its median."""
    med = np.median(a, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(a - med), axis=1, keepdims=True)
    keep = np.abs(a - med) <= sigma * np.maximum(mad, 1e-6)
    return np.where(keep, a, 0).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)


# ----------------------------------------------------------------------------- combining


def _combine_block(
    block: np.ndarray, method: str, sigma: float, want_spread: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sigma-clipped (median ± sigma × MAD std, 3 passes) median or mean along axis 0.

    The values of each pixel are sorted once; clipping about the median keeps a contiguous
    run [lo, hi) of them, so medians and means come from indices and cumulative sums.
    """
    srt = np.sort(np.asarray(block, dtype=np.float32), axis=0)
    n = srt.shape[0]
    lo = np.zeros(srt.shape[1:], np.intp)
    hi = np.full(srt.shape[1:], n, np.intp)

    def at(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, idx[None], axis=0)[0]

    def median() -> np.ndarray:
        return 0.5 * (at(srt, (lo + hi - 1) // 2) + at(srt, (lo + hi) // 2))

    if n >= 3:
        rank = np.arange(n).reshape((n,) + (1,) * (srt.ndim - 1))
        for _ in range(3):
            med = median()
            dev = np.where((rank >= lo) & (rank < hi), np.abs(srt - med), np.inf)
            dev.sort(axis=0)
            k = hi - lo
            mad = 1.4826 * 0.5 * (at(dev, (k - 1) // 2) + at(dev, k // 2))
            new_lo = np.maximum(lo, (srt < med - sigma * mad).sum(axis=0))
            new_hi = np.minimum(hi, (srt <= med + sigma * mad).sum(axis=0))
            new_hi = np.maximum(new_hi, new_lo + 1)  # never an empty run
            if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
                break
            lo, hi = new_lo, new_hi
    if method == "median":
        agg = median()
    else:
        cs = np.cumsum(srt, axis=0, dtype=np.float64)
        cs = np.concatenate([np.zeros((1, *srt.shape[1:])), cs])
        agg = (at(cs, hi) - at(cs, lo)) / (hi - lo)
    spread = None
    if want_spread:
        # The spread of each pixel's values without its highest one: a cosmic ray in one frame
        # does not make a pixel look unstable; a pixel that jumps between levels still does.
        spread = srt[:-1].std(axis=0) if n > 2 else srt.std(axis=0)
    return np.asarray(agg, np.float32), spread


def _rows_per_chunk(n: int, nx: int, budget_bytes: float) -> int:
    return max(1, int(budget_bytes // (n * nx * _BYTES_PER_ELEMENT)))


def combine(
    frames: list[np.ndarray],
    method: str = "median",
    sigma: float = 3.0,
    memory_mb: float = _DEFAULT_MEMORY_MB,
) -> np.ndarray:
    """Combine same-sized frames pixel by pixel, sigma-clipped median or mean, in row chunks."""
    if not frames:
        raise ValueError("nothing to combine")
    ny, nx = frames[0].shape
    out = np.empty((ny, nx), dtype=np.float32)
    step = _rows_per_chunk(len(frames), nx, memory_mb * 2**20)
    for y0 in range(0, ny, step):
        block = np.stack([f[y0 : y0 + step] for f in frames])
        out[y0 : y0 + step], _ = _combine_block(block, method, sigma, False)
    return out


def combine_files(
    paths: list[str],
    prepare: Callable[[str], np.ndarray],
    method: str = "median",
    sigma: float = 3.0,
    memory_mb: float = _DEFAULT_MEMORY_MB,
    want_spread: bool = False,
    scratch_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Combine frames read one at a time by prepare(path), within a memory budget (MB).

    Frames that fit in half the budget are kept in memory; otherwise each prepared frame goes
    to a scratch stack on disk and the combine reads it back in row chunks.
    Returns the combined frame and, if asked, each pixel's spread across the frames.
    """
    if not paths:
        raise ValueError("nothing to combine")
    budget = memory_mb * 2**20
    first = prepare(paths[0])
    ny, nx = first.shape
    n = len(paths)
    out = np.empty((ny, nx), np.float32)
    spread = np.empty((ny, nx), np.float32) if want_spread else None
    in_memory = n * ny * nx * 4 <= budget / 2

    def run(stack: Any, budget_left: float) -> None:
        step = _rows_per_chunk(n, nx, budget_left)
        for y0 in range(0, ny, step):
            agg, spr = _combine_block(stack[:, y0 : y0 + step], method, sigma, want_spread)
            out[y0 : y0 + step] = agg
            if spread is not None and spr is not None:
                spread[y0 : y0 + step] = spr

    if in_memory:
        stack = np.empty((n, ny, nx), np.float32)
        stack[0] = first
        del first
        for i, p in enumerate(paths[1:], start=1):
            stack[i] = _same_shape(prepare(p), (ny, nx), p)
        run(stack, budget / 2)
        return out, spread
    with tempfile.TemporaryDirectory(prefix="tsphot-combine-", dir=scratch_dir) as tmp:
        mm = np.lib.format.open_memmap(
            os.path.join(tmp, "stack.npy"), mode="w+", dtype=np.float32, shape=(n, ny, nx)
        )
        mm[0] = first
        del first
        for i, p in enumerate(paths[1:], start=1):
            mm[i] = _same_shape(prepare(p), (ny, nx), p)
        mm.flush()
        run(mm, budget)
        del mm
    return out, spread


def _same_shape(a: np.ndarray, shape: tuple[int, int], path: str) -> np.ndarray:
    if a.shape != shape:
        raise InputError(
            f"{path}: {a.shape[1]}x{a.shape[0]} px, but the other frames of its group are "
            f"{shape[1]}x{shape[0]}; give calibration frames of one size and binning"
        )
    return a


# ----------------------------------------------------------------------------- one master


def _raw(path: str, info: FrameInfo | None = None) -> np.ndarray:
    """A raw calibration frame in ADU: PEDESTAL applied, overscan subtracted, trimmed."""
    info = info or read_header(path)
    if info.status not in ("ok", "bad_header"):
        raise InputError(info.reason)
    data, _ = read_pixels(path, info.pedestal)
    data, _ = overscan_and_trim(data, info.sections, path)
    return data


def _check_shape(data: np.ndarray, shape: tuple[int, int] | None, path: str, kind: str) -> None:
    if shape is not None and data.shape != shape:
        raise InputError(
            f"{kind} frame {path}: {data.shape[1]}x{data.shape[0]} px, but the science frames "
            f"are {shape[1]}x{shape[0]}; give {kind} frames of the same size and binning"
        )


def make_bias(
    infos: list[FrameInfo],
    shape: tuple[int, int] | None = None,
    memory_mb: float = _DEFAULT_MEMORY_MB,
    want_spread: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sigma-clipped median of raw bias frames (ADU) and, if asked, each pixel's spread."""

    def prep(p: str) -> np.ndarray:
        d = _raw(p, by_path[p])
        _check_shape(d, shape, p, "bias")
        return d

    by_path = {i.path: i for i in infos}
    return combine_files(
        list(by_path), prep, "median", memory_mb=memory_mb, want_spread=want_spread
    )


def make_dark(
    infos: list[FrameInfo],
    bias: np.ndarray | None,
    shape: tuple[int, int] | None = None,
    memory_mb: float = _DEFAULT_MEMORY_MB,
    want_spread: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bias-subtracted darks (ADU at their common exposure time), clipped mean; and spread."""
    for i in infos:
        if not i.exptime or not np.isfinite(i.exptime) or i.exptime <= 0:
            raise InputError(
                f"dark frame {i.path}: EXPTIME is {i.exptime}; a dark needs a positive exposure "
                "time"
            )

    def prep(p: str) -> np.ndarray:
        d = _raw(p, by_path[p])
        _check_shape(d, shape, p, "dark")
        return d - bias if bias is not None else d

    by_path = {i.path: i for i in infos}
    return combine_files(list(by_path), prep, "mean", memory_mb=memory_mb, want_spread=want_spread)


def make_flat(
    infos: list[FrameInfo],
    bias: np.ndarray | None,
    dark_rate: np.ndarray | None,
    shape: tuple[int, int] | None = None,
    memory_mb: float = _DEFAULT_MEMORY_MB,
) -> np.ndarray:
    """Normalised master flat: each flat calibrated and scaled to median 1, then median-combined."""

    def prep(p: str) -> np.ndarray:
        g = _raw(p, by_path[p])
        _check_shape(g, shape, p, "flat")
        if bias is not None:
            g = g - bias
        if dark_rate is not None:
            g = g - dark_rate * np.float32(by_path[p].exptime or 0.0)
        level = float(np.median(g))
        if not level > 0:
            raise InputError(
                f"flat frame {p}: median level {level:.1f} ADU is not positive after the master "
                "bias and dark are subtracted; check that the bias and dark frames are what they "
                "claim (a flat or light frame among them?)"
            )
        return g / np.float32(level)

    by_path = {i.path: i for i in infos}
    flat, _ = combine_files(list(by_path), prep, "median", memory_mb=memory_mb)
    flat /= np.float32(np.nanmedian(flat))
    return flat


def safe_flat(flat: np.ndarray) -> np.ndarray:
    """A flat to divide by: pixels with (almost) no response set to 1 (the mask flags them)."""
    bad = ~np.isfinite(flat) | (flat < 0.05)
    if not bad.any():
        return flat
    out = flat.copy()
    out[bad] = 1.0  # flagged dead by the bad-pixel mask, not divided by ~0
    return out


def bad_pixel_mask(
    dark: np.ndarray | None = None,
    flat: np.ndarray | None = None,
    bias_spread: np.ndarray | None = None,
    dark_spread: np.ndarray | None = None,
    *,
    hot_sigma: float = 5.0,
    hot_factor: float = 10.0,
    dead_level: float = 0.5,
    unstable_ratio: float = 3.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bad-pixel bits from a master dark (ADU, bias removed), a master flat and pixel spreads.

    unstable: spread across the bias frames (or, without them, the dark frames) above
    unstable_ratio times the typical spread; hot: dark more than hot_sigma robust deviations
    above the median and more than hot_factor times the median dark, and not unstable; dead:
    flat below dead_level of its 7x7 neighbourhood median.
    """
    shape = next((a.shape for a in (dark, flat, bias_spread, dark_spread) if a is not None), None)
    if shape is None:
        raise ValueError("a bad-pixel mask needs a dark, a flat or a spread map")
    mask = np.zeros(shape, np.uint8)
    rule: dict[str, Any] = {}
    # Bias frames have no dark current, so a hot pixel's shot noise does not make it look
    # unstable there; a two-level pixel jumps in every exposure.
    spread, source = (bias_spread, "bias") if bias_spread is not None else (dark_spread, "dark")
    if spread is not None:
        typical = float(np.nanmedian(spread))
        mask[spread > unstable_ratio * typical] |= UNSTABLE
        rule["unstable"] = (
            f"spread across {source} frames > {unstable_ratio} x typical {typical:.2f} ADU"
        )
    if dark is not None:
        med = float(np.nanmedian(dark))
        sig = float(1.4826 * np.nanmedian(np.abs(dark - med)))
        thresh = max(hot_sigma * sig, hot_factor * max(med, 0.0))
        hot = ((dark - med) > thresh) & ((mask & UNSTABLE) == 0)
        mask[hot] |= HOT
        rule["hot"] = f"dark > median {med:.2f} + {thresh:.2f} ADU"
        if source == "dark":
            mask[hot] &= ~np.uint8(UNSTABLE)  # shot noise of the dark current, not instability
    if flat is not None:
        from scipy.ndimage import median_filter

        local = median_filter(np.nan_to_num(flat, nan=1.0), size=7, mode="nearest")
        with np.errstate(invalid="ignore", divide="ignore"):
            mask[(flat / local) < dead_level] |= DEAD
        rule["dead"] = f"flat < {dead_level} x its 7x7 median"
    counts = {name: int(((mask & bit) != 0).sum()) for name, bit in BAD_BITS.items()}
    return mask, {"counts": counts, "rules": rule}


# ----------------------------------------------------------------------------- grouping


def night_of(info: FrameInfo) -> str:
    """The date of the evening a frame belongs to (local noon to noon; UT - 12 h if no site)."""
    from astropy.time import Time

    lon = info.site[1] if info.site is not None else 0.0
    if not np.isfinite(info.jd_utc_mid):
        return ""
    return str(Time(info.jd_utc_mid + lon / 360.0 - 0.5, format="jd").to_value("iso", "date"))


def _temp_key(t: float | None) -> float | None:
    return None if t is None else float(round(t))


def group_calibration(infos: list[FrameInfo]) -> dict[tuple, list[FrameInfo]]:
    """Calibration frames grouped into masters: kind, binning, size, (exposure, filter,
    temperature,) night."""
    groups: dict[tuple, list[FrameInfo]] = {}
    for i in infos:
        kind = "dark" if i.kind == "darkflat" else i.kind
        if kind not in ("bias", "dark", "flat"):
            continue
        key: tuple = (kind, tuple(i.binning), tuple(i.shape), night_of(i))
        if kind == "dark":
            key += (round(float(i.exptime), 3), _temp_key(i.ccd_temp))
        elif kind == "flat":
            key += (i.filter.strip(),)
        groups.setdefault(key, []).append(i)
    return groups


def split_by_kind(infos: list[FrameInfo]) -> tuple[list[FrameInfo], list[FrameInfo]]:
    """Science frames and calibration frames (bias, dark, flat by their headers)."""
    cal = [i for i in infos if i.kind in ("bias", "dark", "flat", "darkflat")]
    sci = [i for i in infos if i.kind not in ("bias", "dark", "flat", "darkflat")]
    return sci, cal


# ----------------------------------------------------------------------------- the library


@dataclass
class Library:
    """A calibration library: a folder of master FITS files and their index entries."""

    folder: Path
    entries: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Entries of one kind: bias, dark, flat or bpm."""
        return [e for e in self.entries if e["type"] == kind]

    def path(self, entry: dict[str, Any]) -> str:
        """Absolute path of an entry's FITS file."""
        return str(self.folder / entry["file"])


def load_library(folder: str | Path) -> Library:
    """Read a calibration library folder (its library.json)."""
    folder = Path(folder)
    index = folder / LIBRARY_INDEX
    if not index.is_file():
        raise InputError(
            f"{folder}: no {LIBRARY_INDEX}; build the library with `tsphot calibrate FRAMES "
            f"--library {folder}`"
        )
    try:
        data = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{index}: not valid JSON ({exc}); rebuild the library") from None
    if data.get("format") != LIBRARY_FORMAT:
        raise InputError(f"{index}: not a tsphot calibration library index")
    return Library(folder=folder, entries=list(data.get("masters", [])))


def save_library(lib: Library) -> str:
    """Write library.json atomically; return its path."""
    lib.folder.mkdir(parents=True, exist_ok=True)
    index = lib.folder / LIBRARY_INDEX
    body = {"format": LIBRARY_FORMAT, "version": 1, "masters": lib.entries}
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1, default=_json_default) + "\n")
    os.replace(tmp, index)
    return str(index)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _entry_name(e: dict[str, Any]) -> str:
    parts = [e["type"]]
    if e["type"] == "dark":
        parts.append(f"{e['exptime']:g}s")
    if e["type"] == "flat":
        parts.append(re.sub(r"[^A-Za-z0-9.+-]", "_", e["filter"] or "nofilter"))
    parts.append("{}x{}".format(*e["binning"]))
    if e.get("ccd_temp") is not None and e["type"] in ("dark", "bias"):
        parts.append(f"T{e['ccd_temp']:+.0f}")
    parts.append(e["night"] or "nodate")
    return "_".join(parts) + ".fits"


def _entry_key(e: dict[str, Any]) -> tuple:
    return (
        e["type"],
        tuple(e["binning"]),
        tuple(e["shape"]),
        e["night"],
        e.get("exptime") if e["type"] == "dark" else None,
        e.get("filter") if e["type"] == "flat" else None,
        _temp_key(e.get("ccd_temp")) if e["type"] == "dark" else None,
    )


def _write_master(
    lib: Library, entry: dict[str, Any], data: np.ndarray, steps: list[dict[str, Any]]
) -> None:
    name = _entry_name(entry)
    if any(e.get("file") == name and _entry_key(e) != _entry_key(entry) for e in lib.entries):
        # same kind and night but another frame size: its own file, not the other's overwritten
        name = name[: -len(".fits")] + "_{1}x{0}px.fits".format(*entry["shape"])
    entry["file"] = name
    hdr = fits.Header()
    hdr["IMAGETYP"] = (f"Master {entry['type']}", "tsphot calibration library")
    hdr["TSPTYPE"] = (entry["type"], "tsphot master kind")
    hdr["EXPTIME"] = (float(entry.get("exptime") or 0.0), "[s] exposure of the inputs")
    hdr["FILTER"] = (entry.get("filter") or "", "filter of the inputs")
    hdr["XBINNING"], hdr["YBINNING"] = entry["binning"]
    if entry.get("ccd_temp") is not None:
        hdr["CCD-TEMP"] = (float(entry["ccd_temp"]), "[C] median of the inputs")
    hdr["NIGHT"] = (entry["night"], "evening date of the inputs")
    hdr["JD-MID"] = (float(entry["jd"]), "mean mid-exposure JD (UTC) of the inputs")
    hdr["NCOMBINE"] = (int(entry["n_frames"]), "frames combined")
    if entry["type"] == "dark":
        hdr["BIASINC"] = (bool(entry.get("bias_included")), "bias still in the dark")
    for s in steps:
        _history(hdr, s)
    lib.folder.mkdir(parents=True, exist_ok=True)
    path = lib.folder / entry["file"]
    tmp = path.with_name(f".{path.name}.tmp")
    fits.PrimaryHDU(data, header=hdr).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    # a rebuilt master replaces the old entry with the same key
    key = _entry_key(entry)
    lib.entries = [e for e in lib.entries if _entry_key(e) != key] + [entry]


def _history(hdr: fits.Header, step: dict[str, Any]) -> None:
    text = "tsphot " + json.dumps(step, default=_json_default, separators=(",", ":"))
    for k in range(0, len(text), 70):
        hdr.add_history(text[k : k + 70])


def _group_entry(kind: str, infos: list[FrameInfo]) -> dict[str, Any]:
    temps = [i.ccd_temp for i in infos if i.ccd_temp is not None]
    first = infos[0]
    return {
        "type": kind,
        "binning": list(first.binning),
        "shape": list(first.shape),
        "night": night_of(first),
        "jd": float(np.mean([i.jd_utc_mid for i in infos])),
        "exptime": float(np.median([i.exptime for i in infos])),
        "filter": first.filter.strip(),
        "ccd_temp": float(np.median(temps)) if temps else None,
        "n_frames": len(infos),
        "sources": [Path(i.path).name for i in infos],
    }


def _load(lib: Library, entry: dict[str, Any] | None) -> np.ndarray | None:
    if entry is None:
        return None
    data, _ = read_pixels(lib.path(entry))
    return data


def build_library(
    infos: list[FrameInfo],
    folder: str | Path,
    *,
    memory_mb: float = _DEFAULT_MEMORY_MB,
    linearity_limit: float | None = None,
    existing: Library | None = None,
) -> Library:
    """Build masters from raw calibration frames (sorted by their headers) into a library.

    Bias first, then darks (less the nearest bias), then flats (less bias and scaled dark,
    each normalised), then one bad-pixel mask per night and binning. Entries of the same kind,
    binning, size, night (and exposure, filter, temperature) as an existing one replace it.
    """
    folder = Path(folder)
    lib = existing if existing is not None else Library(folder=folder)
    if existing is None and (folder / LIBRARY_INDEX).is_file():
        lib = load_library(folder)
    usable = []
    seen: set[str] = set()
    for i in infos:
        if os.path.realpath(i.path) in seen:
            continue  # given twice (a folder and a --bias list)
        seen.add(os.path.realpath(i.path))
        if i.status not in ("ok", "duplicate"):
            lib.notes.append(f"skipped {i.path}: {i.reason}")
        else:
            usable.append(i)
    groups = group_calibration(usable)
    spreads: dict[tuple, dict[str, np.ndarray]] = {}
    built_darks: dict[tuple, tuple[dict[str, Any], np.ndarray]] = {}
    for key in sorted(groups, key=lambda k: ("bias", "dark", "flat").index(k[0])):
        kind, members = key[0], sorted(groups[key], key=lambda i: i.jd_utc_mid)
        entry = _group_entry(kind, members)
        night_key = (tuple(entry["binning"]), tuple(entry["shape"]), entry["night"])
        target = FrameInfo(
            path="", jd_utc_mid=entry["jd"], exptime=entry["exptime"], filter=entry["filter"]
        )
        target.binning, target.shape = tuple(entry["binning"]), tuple(entry["shape"])
        target.ccd_temp = entry["ccd_temp"]
        steps: list[dict[str, Any]] = []
        if kind == "bias":
            data, spread = make_bias(members, memory_mb=memory_mb, want_spread=len(members) >= 5)
            steps.append(
                {"step": "master_bias", "method": "sigma-clipped median", "n": len(members)}
            )
            if spread is not None:
                spreads.setdefault(night_key, {})["bias"] = spread
        elif kind == "dark":
            b = select_one(lib, "bias", target)
            bias = _load(lib, b[0])
            data, spread = make_dark(
                members, bias, memory_mb=memory_mb, want_spread=len(members) >= 5
            )
            entry["bias_included"] = bias is None
            entry["bias"] = b[0]["file"] if b[0] else None
            steps.append(
                {
                    "step": "master_dark",
                    "method": "bias-subtracted, sigma-clipped mean",
                    "n": len(members),
                    "bias": entry["bias"],
                }
            )
            prev = built_darks.get(night_key)
            if prev is None or entry["exptime"] > prev[0]["exptime"]:
                built_darks[night_key] = (entry, data)
                if spread is not None:
                    spreads.setdefault(night_key, {})["dark"] = spread
        else:
            kept = members
            if linearity_limit is not None:
                kept = []
                for m in members:
                    level = float(np.median(_raw(m.path, m)))
                    if level > linearity_limit:
                        lib.notes.append(
                            f"flat {m.path}: median {level:.0f} ADU above the linearity limit "
                            f"{linearity_limit:g} ADU; left out of the master flat"
                        )
                    else:
                        kept.append(m)
                if not kept:
                    continue
                entry = _group_entry(kind, kept)
            b = select_one(lib, "bias", target)
            d = select_one(lib, "dark", target)
            bias = _load(lib, b[0])
            dark_rate = None
            if d[0] is not None and not d[0].get("bias_included"):
                dark_rate = _load(lib, d[0]) / np.float32(d[0]["exptime"])
            data = make_flat(kept, bias, dark_rate, memory_mb=memory_mb)
            entry["bias"] = b[0]["file"] if b[0] else None
            entry["dark"] = d[0]["file"] if dark_rate is not None else None
            steps.append(
                {
                    "step": "master_flat",
                    "method": "bias- and dark-subtracted, each normalised to median 1, "
                    "sigma-clipped median",
                    "n": len(kept),
                    "bias": entry["bias"],
                    "dark": entry["dark"],
                }
            )
        entry["provenance"] = steps
        _write_master(lib, entry, data, steps)

    # one bad-pixel mask per night, binning and size, from what that night has
    nights = {
        (tuple(e["binning"]), tuple(e["shape"]), e["night"])
        for e in lib.entries
        if e["type"] in ("dark", "flat") and e["night"] in {night_of(i) for i in usable}
    }
    for nk in sorted(nights):
        dark_e = built_darks.get(nk)
        flats = [
            e
            for e in lib.of_type("flat")
            if (tuple(e["binning"]), tuple(e["shape"]), e["night"]) == nk
        ]
        dark = None
        if dark_e is not None:
            dark = dark_e[1]
            if dark_e[0].get("bias_included"):
                dark = dark - np.float32(np.median(dark))  # the bias level cancels in the test
        flat = _load(lib, flats[0]) if flats else None
        if dark is None and flat is None:
            continue
        spr = spreads.get(nk, {})
        mask, stats = bad_pixel_mask(dark, flat, spr.get("bias"), spr.get("dark"))
        entry = {
            "type": "bpm",
            "binning": list(nk[0]),
            "shape": list(nk[1]),
            "night": nk[2],
            "jd": float(np.mean([e["jd"] for e in lib.entries if e["night"] == nk[2]])),
            "exptime": 0.0,
            "filter": "",
            "ccd_temp": None,
            "n_frames": 0,
            "sources": [e for e in (dark_e[0]["file"] if dark_e else None,) if e]
            + [f["file"] for f in flats[:1]],
            "counts": stats["counts"],
            "rules": stats["rules"],
        }
        steps = [{"step": "bad_pixel_mask", **stats, "bits": BAD_BITS}]
        entry["provenance"] = steps
        _write_master(lib, entry, mask, steps)
    save_library(lib)
    return lib


# ----------------------------------------------------------------------------- selection


def _same_geometry(e: dict[str, Any], info: FrameInfo) -> bool:
    return tuple(e["binning"]) == tuple(info.binning) and tuple(e["shape"]) == tuple(info.shape)


def select_one(lib: Library, kind: str, info: FrameInfo) -> tuple[dict[str, Any] | None, str]:
    """The best master of one kind for a frame, and why (or why none)."""
    cands = [e for e in lib.of_type(kind) if _same_geometry(e, info)]
    geom = "{}x{} binning, {}x{} px".format(*info.binning, info.shape[1], info.shape[0])
    if not cands:
        return None, f"no {kind} master with {geom}"
    days = lambda e: abs(e["jd"] - info.jd_utc_mid)  # noqa: E731
    if kind == "flat":
        filt = info.filter.strip().lower()
        same = [e for e in cands if (e.get("filter") or "").strip().lower() == filt]
        if not same:
            have = sorted({e.get("filter") or "none" for e in cands})
            return None, f"no flat in filter {info.filter or 'none'!r} (have {have})"
        best = min(same, key=days)
        return best, f"filter {best['filter'] or 'none'}, nearest night ({days(best):.2f} d)"
    if kind == "dark":
        t = info.ccd_temp
        if t is not None:
            near = [
                e
                for e in cands
                if e.get("ccd_temp") is not None and abs(e["ccd_temp"] - t) <= _TEMP_TOLERANCE_C
            ]
            cands = near or cands
        exact = [
            e
            for e in cands
            if abs(e["exptime"] - info.exptime) <= _SAME_EXPTIME * max(info.exptime, 1e-9)
        ]
        usable = [e for e in cands if not e.get("bias_included")]
        if exact:
            best = min(exact, key=days)
            why = f"same exposure {best['exptime']:g} s, nearest night ({days(best):.2f} d)"
        elif usable:
            # nearest night; then the longest exposure (its rate is the least noisy)
            best = min(usable, key=lambda e: (round(days(e), 1), -e["exptime"]))
            why = (
                f"no {info.exptime:g} s dark: {best['exptime']:g} s dark scaled by "
                f"{info.exptime / best['exptime']:.4g}, nearest night ({days(best):.2f} d)"
            )
        else:
            return None, (
                f"no {info.exptime:g} s dark, and the darks of other exposures still hold the "
                "bias (no bias frames) so cannot be scaled; give bias frames"
            )
        if t is not None and best.get("ccd_temp") is not None:
            dt = best["ccd_temp"] - t
            why += f", {dt:+.1f} C from the frame"
            if abs(dt) > _TEMP_TOLERANCE_C:
                why += " (no dark within 2 C)"
        return best, why
    best = min(cands, key=days)
    return best, f"nearest night ({days(best):.2f} d)"


def select_masters(lib: Library, info: FrameInfo) -> dict[str, Any]:
    """The masters chosen for one science frame: per kind its file, why, and the dark scale."""
    choice: dict[str, Any] = {}
    for kind in ("bias", "dark", "flat", "bpm"):
        e, why = select_one(lib, kind, info)
        choice[kind] = {"file": e["file"] if e else None, "why": why}
        if kind == "dark" and e is not None:
            choice[kind]["exptime"] = e["exptime"]
            choice[kind]["scale"] = info.exptime / e["exptime"]
            choice[kind]["bias_included"] = bool(e.get("bias_included"))
    return choice


def masters_for(lib: Library, choice: dict[str, Any]) -> Masters:
    """Load the masters named in a choice (see select_masters)."""
    m = Masters(choice=choice)

    def get(kind: str) -> np.ndarray | None:
        f = choice.get(kind, {}).get("file")
        if not f:
            return None
        data, _ = read_pixels(str(lib.folder / f))
        return data

    m.bias = get("bias")
    dark = get("dark")
    if dark is not None:
        d = choice["dark"]
        if d.get("bias_included"):
            m.bias = dark  # same exposure: the raw dark removes bias and dark current at once
        else:
            m.dark_rate = dark / np.float32(d["exptime"])
    flat = get("flat")
    m.flat = safe_flat(flat) if flat is not None else None
    bad = get("bpm")
    m.bad = bad.astype(np.uint8) if bad is not None else None
    for kind in ("bias", "dark", "flat", "bpm"):
        if choice.get(kind, {}).get("file"):
            m.provenance.append({"step": f"use_{kind}", **choice[kind]})
    return m


# ----------------------------------------------------------------------------- applying


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


def calibrate_frame(
    raw: np.ndarray,
    info: FrameInfo,
    masters: Masters,
    *,
    linearity_limit: float | None = None,
    lacosmic: bool = False,
    gain: float | None = None,
    read_noise: float | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Calibrate one raw frame (ADU, PEDESTAL applied): overscan, trim, bias, dark, flat and
    optionally cosmic rays; return the frame and each step with its arguments."""
    steps: list[dict[str, Any]] = []
    if info.pedestal:
        steps.append({"step": "pedestal", "added_adu": info.pedestal})
    if linearity_limit is not None:
        n_over = int(np.count_nonzero(raw >= linearity_limit))
        steps.append(
            {"step": "linearity_limit", "limit_adu": linearity_limit, "pixels_above": n_over}
        )
    data, st = overscan_and_trim(raw, info.sections, info.path)
    steps += st
    _check_shape_master(data, masters, info.path)
    ch = masters.choice
    if masters.bias is not None:
        # into a new float32 frame in one pass (as a copy, then data -= bias, would give)
        data = np.subtract(data, masters.bias, out=np.empty(data.shape, np.float32))
        src = ch.get("dark") if ch.get("dark", {}).get("bias_included") else ch.get("bias")
        steps.append({"step": "subtract_bias", "master": (src or {}).get("file")})
    else:
        data = data.astype(np.float32, copy=True)
    if masters.dark_rate is not None:
        data -= masters.dark_for(info.exptime)
        d = ch.get("dark", {})
        steps.append(
            {
                "step": "subtract_dark",
                "master": d.get("file"),
                "master_exptime_s": d.get("exptime"),
                "scale": round(float(d.get("scale", 1.0)), 6),
                "exptime_s": info.exptime,
            }
        )
    if masters.flat is not None:
        data /= masters.flat
        steps.append({"step": "flat_correct", "master": ch.get("flat", {}).get("file")})
    if lacosmic:
        data, n_cr = clean_lacosmic(data, gain or 1.0, read_noise or 0.0)
        steps.append(
            {
                "step": "cosmicray_lacosmic",
                "package": "astroscrappy",
                "gain": gain or 1.0,
                "read_noise": read_noise or 0.0,
                "pixels_cleaned": n_cr,
            }
        )
    return data, steps


def _check_shape_master(data: np.ndarray, m: Masters, path: str) -> None:
    for name in ("bias", "dark_rate", "flat"):
        a = getattr(m, name)
        if a is not None and a.shape != data.shape:
            raise InputError(
                f"{path}: {data.shape[1]}x{data.shape[0]} px after trimming, but the master "
                f"{name} is {a.shape[1]}x{a.shape[0]} px"
            )


def clean_lacosmic(
    data: np.ndarray,
    gain: float,
    read_noise: float,
    *,
    sigclip: float = 4.5,
    objlim: float = 5.0,
    satlevel: float = np.inf,
) -> tuple[np.ndarray, int]:
    """Cosmic rays found and replaced by L.A.Cosmic (van Dokkum 2001, astroscrappy); ADU in,
    ADU out; also the number of pixels replaced."""
    try:
        import astroscrappy
    except ImportError:  # pragma: no cover - a dependency, but say what to do if it is missing
        raise InputError(
            "cosmic-ray cleaning needs the astroscrappy package: pip install astroscrappy"
        ) from None
    finite = np.isfinite(data)
    clean_in = np.where(finite, data, np.nanmedian(data)).astype(np.float32)
    mask, cleaned = astroscrappy.detect_cosmics(
        clean_in,
        inmask=~finite,
        sigclip=sigclip,
        objlim=objlim,
        gain=gain,
        readnoise=read_noise,
        satlevel=satlevel,
        sepmed=True,
        cleantype="meanmask",
        verbose=False,
    )
    # astroscrappy >= 1.1 returns the input's units (ADU here)
    out = np.asarray(cleaned, np.float32)
    out[~finite] = data[~finite]
    return out, int(mask.sum())


def write_calibrated(
    path: str | Path,
    data: np.ndarray,
    header: fits.Header,
    steps: list[dict[str, Any]],
    sections: dict[str, str] | None = None,
) -> str:
    """Write a calibrated frame (float32) with each calibration step in its header."""
    from tsphot import __version__

    hdr = header.copy()
    for k in ("BZERO", "BSCALE", "BLANK"):
        hdr.remove(k, ignore_missing=True)
    trimmed = any(s["step"] == "trim" for s in steps)
    if trimmed and sections:
        sec = sections.get("TRIMSEC") or sections.get("DATASEC") or ""
        rows, cols = parse_section(sec)
        for ax, off in (("1", cols.start), ("2", rows.start)):
            if f"CRPIX{ax}" in hdr:
                hdr[f"CRPIX{ax}"] = hdr[f"CRPIX{ax}"] - off
        for k in ("BIASSEC", "DATASEC", "TRIMSEC"):
            hdr.remove(k, ignore_missing=True)
    if "PEDESTAL" in hdr:
        hdr["PEDESTAL"] = (0, "already added to the pixels by tsphot")
    short = {
        "subtract_overscan": "OSCAN",
        "trim": "TRIM",
        "subtract_bias": "SUBBIAS",
        "subtract_dark": "SUBDARK",
        "flat_correct": "FLATCOR",
        "cosmicray_lacosmic": "CRCLEAN",
        "linearity_limit": "NONLIN",
    }
    stat = ""
    for s in steps:
        key = short.get(s["step"])
        if key:
            # the keyword holds the gist; the HISTORY card below holds every argument
            skip = ("step", "method", "package", "master_exptime_s", "exptime_s")
            args = ", ".join(f"{k}={v}" for k, v in s.items() if k not in skip)
            hdr[key] = args[:68] if len(args) > 40 else (args, f"tsphot {s['step']}")
        stat += {"subtract_bias": "B", "subtract_dark": "D", "flat_correct": "F"}.get(s["step"], "")
        _history(hdr, s)
    hdr["CALSTAT"] = (stat, "B bias, D dark, F flat corrected")
    hdr["TSPHOTV"] = (__version__, "tsphot version that calibrated this frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fits.PrimaryHDU(np.asarray(data, np.float32), header=hdr).writeto(
        tmp, overwrite=True, output_verify="silentfix"
    )
    os.replace(tmp, path)
    return str(path)


# ----------------------------------------------------------------------------- simple masters
# (the run's --bias/--dark/--flat lists, when no library is used)


def master_bias(paths: list[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Sigma-clipped median of raw bias frames (ADU)."""
    return make_bias([read_header(p) for p in paths], shape)[0]


def master_dark_rate(
    paths: list[str], bias: np.ndarray | None, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Dark current per second (ADU/s): bias-subtracted darks, clipped mean, divided by exposure."""
    infos = [read_header(p) for p in paths]
    dark, _ = make_dark(infos, bias, shape)
    times = {i.exptime for i in infos}
    t = float(np.median([i.exptime for i in infos]))
    if len(times) > 1:
        # darks of different exposures: combine their rates instead
        rates = []
        for i in infos:
            d = _raw(i.path, i) - (bias if bias is not None else 0.0)
            rates.append(d / np.float32(i.exptime))
        return combine(rates, "mean")
    return dark / np.float32(t)


def master_flat(
    paths: list[str],
    bias: np.ndarray | None,
    dark_rate: np.ndarray | None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Normalised master flat: each flat calibrated and scaled to median 1, then median-combined."""
    return safe_flat(make_flat([read_header(p) for p in paths], bias, dark_rate, shape))


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


def write_masters(masters: Masters, folder: str | Path) -> dict[str, str]:
    """Write the masters as FITS files with their provenance; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, arr in masters.arrays().items():
        hdr = fits.Header()
        hdr["IMAGETYP"] = f"Master {name}"
        for p in masters.provenance:
            files = p.get("files", [])
            hdr.add_history(f"tsphot {p['step']}: {p.get('method', '')} of {len(files)} frames")
        path = folder / f"master_{name}.fits"
        fits.PrimaryHDU(arr, header=hdr).writeto(path, overwrite=True)
        written[name] = str(path)
    return written
