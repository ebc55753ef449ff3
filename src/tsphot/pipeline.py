"""Pipeline: the only place that knows the order of the stages (plan → map → reduce → products)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsphot import calibrate, detect, ingest, measure, noise, register, store
from tsphot import field as field_mode
from tsphot.errors import FrameError, InputError, SettingsError, TsphotError
from tsphot.executors import Executor
from tsphot.ingest import FrameInfo
from tsphot.settings import ObjectSpec, Settings

log = logging.getLogger("tsphot")

REGISTER_SIGMA = 15.0  # detection threshold for per-frame registration stars
# Empty-sky apertures (settings.sky_apertures when not given): many in field mode, where the
# background term decides the faint stars' errors; a modest number in a plain run.
SKY_APERTURES_FIELD = 50
SKY_APERTURES_DEFAULT = 30
SKY_DETECT_SIGMA = 3.0  # empty-sky apertures keep clear of every source above this (sigma)


@dataclass
class PlanObject:
    """One object to measure: its name, role and position on the reference frame."""

    name: str
    role: str  # target | comp | check
    x: float
    y: float
    pinned: bool = False  # a user-given comparison star
    catalog_mag: float | None = None
    # A moving target: (x, y) is its position at time epoch (JD UTC) in reference-frame pixels,
    # and it moves by rate (px/day, reference-frame pixels); None for a fixed star.
    rate: tuple[float, float] | None = None
    epoch: float = float("nan")


@dataclass
class Plan:
    """Everything a worker needs to measure one frame; small and picklable."""

    objects: list[PlanObject]
    ref_path: str
    ref_xy: np.ndarray  # bright reference stars for registration, brightest first
    apertures: measure.Apertures
    masters_file: str | None
    gain: float
    saturation: float
    detect_sigma: float
    centroid_box: int
    max_shift: float
    shape: tuple[int, int]
    clean_cosmics: bool = False
    gain_source: str = "header"  # header | settings | assumed | estimated
    # calibration: masters per frame index (else masters_file), and what to do per frame
    masters_by_frame: dict[int, str] = field(default_factory=dict)
    linearity_limit: float | None = None
    lacosmic: bool = False
    read_noise: float | None = None
    save_calibrated: str | None = None  # folder for calibrated frames, if asked
    centroid: str = "com"
    sky_method: str = "median"
    # Stars of the reference frame masked out of every sky annulus: positions, peaks (ADU above
    # the sky) and the reference frame's sky noise (ADU); none when masking is off.
    mask_xy: np.ndarray | None = None
    mask_peak: np.ndarray | None = None
    mask_noise: float = float("nan")
    mask_stars: bool = True  # leave the mask_xy stars out of sky annuli
    field_xy: np.ndarray | None = None  # field mode: every other star on the reference (px)
    # Empty-sky apertures (reference-frame px): measured like stars, never recentred; their
    # scatter measures the background noise the CCD equation misses (noise.background_excess).
    sky_xy: np.ndarray | None = None


def object_positions(plan: Plan, jd: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference-frame pixel positions of every object at time jd (moving targets move)."""
    x = np.array([o.x for o in plan.objects], float)
    y = np.array([o.y for o in plan.objects], float)
    for i, o in enumerate(plan.objects):
        if o.rate is not None:
            dt = jd - o.epoch
            x[i] += o.rate[0] * dt
            y[i] += o.rate[1] * dt
    return x, y


@dataclass
class FrameResult:
    """What measuring one frame produced: numbers only, never pixels."""

    index: int
    path: str
    status: str = "ok"
    reason: str = ""
    transform: register.Transform | None = None
    fwhm: float = float("nan")
    sky_level: float = float("nan")
    n_sources: int = 0
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    sha256: str = ""  # of the exposure's bytes, hashed as it was read; keys the checkpoint


_MASTERS_CACHE: dict[str, calibrate.Masters] = {}


def _masters(path: str | None) -> calibrate.Masters:
    """Load the masters once per worker process."""
    if path is None:
        return calibrate.Masters()
    key = f"{path}:{os.stat(path).st_mtime_ns}"  # a rerun into the same folder rewrites it
    if key not in _MASTERS_CACHE:
        _MASTERS_CACHE[key] = calibrate.load_masters_npz(path)
    return _MASTERS_CACHE[key]


def load_masters(path: str, shape: tuple[int, int]) -> calibrate.Masters:
    """Masters from a tsphot masters.npz (as a run writes it), checked against the frame size."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("bias", "dark_rate", "flat", "bad") if k in z}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a tsphot masters.npz ({exc})") from None
    for k, v in arrays.items():
        if v.shape != tuple(shape):
            raise InputError(
                f"{path}: master {k} is {v.shape[1]}x{v.shape[0]} px, the science frames are "
                f"{shape[1]}x{shape[0]} px"
            )
    m = calibrate.Masters(**arrays)
    m.provenance.append({"step": "masters", "files": [path], "method": "given masters.npz"})
    return m


def _empty_columns(n_obj: int, n_r: int) -> dict[str, np.ndarray]:
    nan = np.full(n_obj, np.nan)
    return {
        "x": nan.copy(),
        "y": nan.copy(),
        "flux": np.full((n_obj, n_r), np.nan),
        "flux_err": np.full((n_obj, n_r), np.nan),
        "area": np.full((n_obj, n_r), np.nan),
        "radius": np.full((n_obj, n_r), np.nan),
        "annulus": np.full((n_obj, 2), np.nan),
        "sky": nan.copy(),
        "sky_median": nan.copy(),
        "sky_mean": nan.copy(),
        "sky_mode": nan.copy(),
        "sky_std": nan.copy(),
        "n_sky": np.zeros(n_obj, int),
        "sky_masked": np.zeros(n_obj, int),
        "peak": nan.copy(),
        "saturated": np.zeros(n_obj, bool),
        "edge": np.zeros(n_obj, bool),
        "bad_pixel": np.zeros(n_obj, bool),
        "recentred": np.zeros(n_obj, bool),
        "obj_status": np.array(["not_measured"] * n_obj, dtype=object),
    }


def measure_frame(info: FrameInfo, plan: Plan) -> FrameResult:
    """Load, calibrate, register and measure one exposure; failures become status and reason."""
    n_obj, n_r = len(plan.objects), len(plan.apertures.radii)
    res = FrameResult(index=info.index, path=info.path, columns=_empty_columns(n_obj, n_r))
    if info.status != "ok":
        res.status, res.reason = info.status, info.reason
        return res
    try:
        raw, header, res.sha256 = ingest.read_pixels_sha256(
            info.path, info.pedestal, header=bool(plan.save_calibrated)
        )
        if raw.shape != plan.shape:
            raise FrameError(
                f"{info.path}: frame size {raw.shape[::-1]} differs from {plan.shape[::-1]}"
            )
        lo, hi = raw.min(), raw.max()  # (a NaN or an infinity shows in one of them)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(raw)
            if finite.sum() < 0.5 * raw.size:
                raise FrameError(
                    f"{info.path}: {100 * (1 - finite.mean()):.0f} % of the pixels are NaN or "
                    f"infinite ({_region(~finite)}); check the camera software's output"
                )
            lo, hi = np.nanmin(raw), np.nanmax(raw)
        if lo == hi:  # (cheaper than a standard deviation of every pixel)
            raise FrameError(f"{info.path}: image is constant ({hi} ADU); empty frame")
        masters = _masters(plan.masters_by_frame.get(info.index, plan.masters_file))
        data, steps = calibrate.calibrate_frame(
            raw,
            info,
            masters,
            linearity_limit=plan.linearity_limit,
            lacosmic=plan.lacosmic,
            gain=plan.gain,
            read_noise=plan.read_noise,
        )
        raw = calibrate.trim(raw, info.sections)  # the raw peak, over the same pixels
        finite = measure.all_finite(data)  # (once per frame: each check reads every pixel)
        bad = masters.bad if masters.any_bad else None  # (a mask of zeros flags nothing)
        if plan.save_calibrated:
            name = Path(info.path).name.split(".fit")[0] + "_cal.fits"
            calibrate.write_calibrated(
                Path(plan.save_calibrated) / name, data, header, steps, info.sections
            )
        src, tr = _register(data, plan, info.path)
        res.fwhm, res.sky_level, res.n_sources = src.fwhm, src.background, len(src)
        res.transform = tr
        x, y = tr(*object_positions(plan, info.jd_utc_mid))
        moving = np.array([o.rate is not None for o in plan.objects])
        ny, nx = data.shape
        aps = plan.apertures.scaled(res.fwhm)
        r_out = aps.annulus[1]
        inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
        x, y, moved = measure.recentre(
            data,
            x,
            y,
            plan.centroid_box,
            plan.max_shift,
            method=plan.centroid,
            fwhm=res.fwhm,
        )
        mask_xy, mask_r = None, 0.0
        blended = np.zeros(n_obj, bool)
        if plan.mask_xy is not None and len(plan.mask_xy):
            mx, my = tr(plan.mask_xy[:, 0], plan.mask_xy[:, 1])
            fw = res.fwhm if np.isfinite(res.fwhm) else 3.0
            if moving.any():
                # a moving target crossing a star: that star's light (above 3 sigma of the sky)
                # reaches into the aperture
                reach = measure.mask_radius_for(plan.mask_peak, 6 * plan.mask_noise, fw, max_fwhm=4)
                for i in np.flatnonzero(moving):
                    d = np.hypot(mx - x[i], my - y[i])
                    blended[i] = bool(np.any(d < max(aps.radii) + reach))
            if plan.mask_stars:
                mask_xy = np.column_stack([mx, my])
                mask_r = measure.mask_radius_for(plan.mask_peak, plan.mask_noise, fw)
        m = measure.measure_stars(
            data,
            x,
            y,
            aps,
            plan.gain,
            raw=raw,
            saturation=plan.saturation,
            fwhm=res.fwhm,
            clean_cosmics=plan.clean_cosmics,
            bad_mask=bad,
            sky_method=plan.sky_method,
            mask_xy=mask_xy,
            mask_radius=mask_r,
            finite=finite,
        )
        cols = res.columns
        cols.update({k: m[k] for k in m})
        cols["x"], cols["y"], cols["recentred"] = x, y, moved
        cols["radius"] = np.tile(np.asarray(aps.radii, float), (n_obj, 1))
        cols["annulus"] = np.tile(np.asarray(aps.annulus, float), (n_obj, 1))
        st = np.array(["ok"] * n_obj, dtype=object)
        near_edge = (x < r_out) | (x > nx - 1 - r_out) | (y < r_out) | (y > ny - 1 - r_out)
        st[near_edge] = "near_edge"
        st[~inside] = "off_frame"
        st[(st == "ok") & m["saturated"]] = "saturated"
        st[(st == "ok") & blended] = "blended"
        if not np.isfinite(info.jd_utc_mid):
            st[moving] = "no_time"  # a moving target cannot be placed without the time
        st[(st == "ok") & ~np.isfinite(m["flux"][:, 0])] = "no_flux"
        if not finite:
            _flag_nonfinite(data, x, y, max(plan.apertures.radii), st, cols)
        cols["obj_status"] = st
        if plan.field_xy is not None and len(plan.field_xy):
            cols.update(_measure_field(data, raw, tr, plan, mask_xy, mask_r))
        if plan.sky_xy is not None and len(plan.sky_xy):
            cols.update(
                _measure_sky(data, raw, tr, plan, aps, res.fwhm, bad, mask_xy, mask_r, finite)
            )
    except (FrameError, InputError) as exc:
        res.status = "unregistered" if "register" in str(exc) else "bad_frame"
        res.reason = str(exc)
    except Exception as exc:  # one bad exposure never ends a run
        res.status, res.reason = "failed", f"{info.path}: {type(exc).__name__}: {exc}"
    return res


def _register(data: np.ndarray, plan: Plan, path: str) -> tuple[detect.Sources, register.Transform]:
    """The frame's bright stars (with its FWHM and sky) and its transform from the reference.

    First from the bright stars found on a block-binned copy of the frame (cheap); when they
    are too few or do not match the reference, from a full detection, as a frame of another
    pointing, a thin cloud or an odd PSF may need.
    """
    sigma = max(plan.detect_sigma, REGISTER_SIGMA)
    src = detect.bright_sources(data, sigma, saturation=plan.saturation, max_sources=150)
    if len(src) >= 10:
        try:
            return src, register.match_stars(plan.ref_xy, np.column_stack([src.x, src.y]))
        except FrameError:
            pass
    # Registration needs only the bright stars: a high threshold keeps detection cheap;
    # thin or cloudy frames fall back to the user's threshold.
    src = detect.find_sources(data, sigma, saturation=plan.saturation, max_sources=150)
    if len(src) < 10:
        src = detect.find_sources(
            data, plan.detect_sigma, saturation=plan.saturation, max_sources=150
        )
    try:
        tr = register.match_stars(plan.ref_xy, np.column_stack([src.x, src.y]))
    except FrameError as exc:
        raise FrameError(f"{path}: {exc} — {len(src)} sources detected") from None
    return src, tr


def _region(bad: np.ndarray) -> str:
    """Where the True pixels of a mask lie: count and bounding box (0-based x, y)."""
    ys, xs = np.nonzero(bad)
    if len(xs) == 0:
        return "none"
    return f"{len(xs)} px in x {xs.min()}..{xs.max()}, y {ys.min()}..{ys.max()}"


def _flag_nonfinite(
    data: np.ndarray, x: np.ndarray, y: np.ndarray, r: float, st: np.ndarray, cols: dict
) -> None:
    """Objects with NaN/inf pixels in their aperture: status bad_pixels and where they are.
    The aperture sums skip such pixels, so the flux would be low without a word."""
    bad = ~np.isfinite(data)
    ny, nx = data.shape
    reasons = np.array([""] * len(x), dtype=object)
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        if not (np.isfinite(xi) and np.isfinite(yi)) or st[i] == "off_frame":
            continue
        x0, x1 = max(int(np.floor(xi - r)), 0), min(int(np.ceil(xi + r)) + 1, nx)
        y0, y1 = max(int(np.floor(yi - r)), 0), min(int(np.ceil(yi + r)) + 1, ny)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = bad[y0:y1, x0:x1] & ((xx - xi) ** 2 + (yy - yi) ** 2 <= r * r)
        if inside.any():
            st[i] = "bad_pixels"
            bx, by = xx[inside], yy[inside]
            reasons[i] = (
                f"{inside.sum()} NaN/inf pixels in the aperture (x {bx.min()}..{bx.max()}, "
                f"y {by.min()}..{by.max()}): a camera defect or a bad calibration frame; "
                "left out of this frame's photometry"
            )
    cols["obj_reason"] = reasons


def _measure_field(
    data: np.ndarray,
    raw: np.ndarray,
    tr: Any,
    plan: Plan,
    mask_xy: np.ndarray | None = None,
    mask_radius: float | np.ndarray = 0.0,
) -> dict:
    """Field mode: the same vectorised photometry for every other star on the reference."""
    ny, nx = data.shape
    r_out = plan.apertures.annulus[1]
    x, y = tr(plan.field_xy[:, 0], plan.field_xy[:, 1])
    inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    # No recentring: the frame's transform, fitted to the bright stars, places them well, and
    # recentring moves only stars far above the field's limit. measure_stars' apertures, sky
    # estimator and errors, made cheap for many stars:
    m = field_mode.photometry(
        data, x, y, plan.apertures, plan.gain, plan.saturation, raw=raw,
        mask_xy=mask_xy, mask_radius=mask_radius,
    )  # fmt: skip
    st = np.array(["ok"] * len(x), dtype=object)
    st[(x < r_out) | (x > nx - 1 - r_out) | (y < r_out) | (y > ny - 1 - r_out)] = "near_edge"
    st[~inside] = "off_frame"
    st[(st == "ok") & m["saturated"]] = "saturated"
    st[(st == "ok") & ~np.isfinite(m["flux"][:, 0])] = "no_flux"
    return {
        "field_x": x,
        "field_y": y,
        "field_flux": m["flux"],
        "field_flux_err": m["flux_err"],
        "field_status": st,
    }


def _measure_sky(
    data: np.ndarray,
    raw: np.ndarray,
    tr: Any,
    plan: Plan,
    aps: measure.Apertures,
    fwhm: float,
    bad_mask: np.ndarray | None,
    mask_xy: np.ndarray | None,
    mask_radius: float | np.ndarray,
    finite: bool | None = None,
) -> dict:
    """Empty-sky apertures: placed by the frame's transform and measured as the stars are
    (same apertures, annulus sky, masks and cleaning), but never recentred: no star to find."""
    ny, nx = data.shape
    r_out = aps.annulus[1]
    x, y = tr(plan.sky_xy[:, 0], plan.sky_xy[:, 1])
    m = measure.measure_stars(
        data, x, y, aps, plan.gain, raw=raw, saturation=plan.saturation, fwhm=fwhm,
        clean_cosmics=plan.clean_cosmics, bad_mask=bad_mask, sky_method=plan.sky_method,
        mask_xy=mask_xy, mask_radius=mask_radius, finite=finite,
    )  # fmt: skip
    st = np.array(["ok"] * len(x), dtype=object)
    st[(x < r_out) | (x > nx - 1 - r_out) | (y < r_out) | (y > ny - 1 - r_out)] = "near_edge"
    st[~((x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1))] = "off_frame"
    st[(st == "ok") & (m["saturated"] | m["bad_pixel"])] = "bad_pixels"
    st[(st == "ok") & ~np.isfinite(m["flux"][:, 0])] = "no_flux"
    # the CCD equation's background variance of each sum: its error less the photon term
    bkg = np.sqrt(np.clip(m["flux_err"] ** 2 - np.clip(m["flux"], 0, None), 0, None))
    return {
        "skyap_x": x,
        "skyap_y": y,
        "skyap_flux": m["flux"],
        "skyap_bkg_err": bkg,
        "skyap_status": st,
    }


def _sky_positions(
    data: np.ndarray,
    src: detect.Sources,
    avoid: list[tuple[float, float, float]],
    aps: measure.Apertures,
    fwhm: float,
    gain: float,
    n: int,
    bad_mask: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Up to n empty-sky positions (px) on the reference frame, spread over it at random (seeded).

    Candidates lie on a grid of non-overlapping apertures whose annulus is inside the frame;
    each must be clear of every detected star's wings (the radius where its Moffat profile
    falls to half the sky noise, as the annulus masks use), of the ``avoid`` circles (x, y,
    radius: the planned objects, a moving target's track), of NaN and bad pixels, and its
    aperture sum on the reference frame must be within 2 sigma of zero (no faint star below
    the detection limit) and its brightest pixel within 5 sigma of the sky (no star hidden in
    a brighter one's detection, no hot pixel).
    """
    ny, nx = data.shape
    r_ap, r_out = max(aps.radii), aps.annulus[1]
    if n <= 0:
        return np.zeros((0, 2))
    step = 2.0 * r_ap + 2.0
    margin = r_out + 2.0
    gx = np.arange(margin, nx - 1 - margin, step)
    gy = np.arange(margin, ny - 1 - margin, step)
    if gx.size == 0 or gy.size == 0:
        return np.zeros((0, 2))
    xx, yy = np.meshgrid(gx, gy)
    cand = np.column_stack([xx.ravel(), yy.ravel()])
    if len(src):
        # wings out to where they fall to half the sky noise, a bright star's far beyond 8 FWHM
        wing = measure.mask_radius_for(
            np.asarray(src.peak, float), src.background_rms, fwhm, max_fwhm=25.0
        )
        sxy = np.column_stack([src.x, src.y])
        from scipy.spatial import cKDTree

        near = cKDTree(sxy).query_ball_point(cand, r_ap + float(np.max(wing)))
        clear = np.ones(len(cand), bool)
        for i, js in enumerate(near):
            if js:
                d = np.hypot(sxy[js, 0] - cand[i, 0], sxy[js, 1] - cand[i, 1])
                clear[i] = bool(np.all(d > r_ap + wing[js]))
        cand = cand[clear]
    for ax_, ay_, ar in avoid:
        cand = cand[np.hypot(cand[:, 0] - ax_, cand[:, 1] - ay_) > ar + r_ap]
    if len(cand) == 0:
        return np.zeros((0, 2))
    mask_xy, mask_r = None, 0.0
    if len(src):  # the annulus clear of stars, as in the run: a faint star then shows
        mask_xy = np.column_stack([src.x, src.y])
        mask_r = measure.mask_radius_for(np.asarray(src.peak, float), src.background_rms, fwhm)
    m = measure.measure_stars(
        data, cand[:, 0], cand[:, 1], aps, gain, bad_mask=bad_mask, mask_xy=mask_xy,
        mask_radius=mask_r,
    )  # fmt: skip
    f, e = m["flux"][:, -1], m["flux_err"][:, -1]
    # a star below the detection limit still shows in the aperture sum: 2 sigma, not 3 (a
    # truly empty position is lost 1 time in 20; the grid has many more than are needed)
    good = np.isfinite(f) & np.isfinite(e) & (np.abs(f) <= 2.0 * e) & ~m["bad_pixel"]
    # no pixel far above the sky either: a star the detection merged into a brighter one's
    # isophote, or a hot pixel (pure sky reaches ~3.5 sigma over a few hundred pixels)
    with np.errstate(invalid="ignore"):
        good &= ~m["edge"] & (m["peak"] - m["sky"] < 5.0 * m["sky_std"])
    finite = np.isfinite(data)
    for i in np.flatnonzero(good):  # no NaN pixel under the aperture (sep skips them silently)
        x0, y0 = int(cand[i, 0] - r_ap), int(cand[i, 1] - r_ap)
        x1, y1 = int(cand[i, 0] + r_ap) + 2, int(cand[i, 1] + r_ap) + 2
        good[i] = bool(finite[max(y0, 0) : y1, max(x0, 0) : x1].all())
    cand = cand[good]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(cand))[:n]
    return cand[np.sort(pick)]


def _field_stars(
    src: detect.Sources,
    objects: list[PlanObject],
    shape: tuple[int, int],
    r_ap: float,
    r_out: float,
    fwhm: float,
    gain: float,
    saturation: float,
    min_snr: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Field mode: reference-frame stars above min_snr, off the planned objects; S/N, blended."""
    ny, nx = shape
    flux_e = np.clip(src.flux, 0, None) * gain
    area = np.pi * r_ap**2
    snr = flux_e / np.sqrt(flux_e + area * (src.background_rms * gain) ** 2)
    keep = snr >= min_snr
    keep &= (src.peak + src.background) < 0.95 * saturation
    keep &= src.star_like()  # no cosmic ray of the reference frame
    keep &= (src.x > r_out) & (src.x < nx - 1 - r_out) & (src.y > r_out) & (src.y < ny - 1 - r_out)
    for o in objects:
        keep &= np.hypot(src.x - o.x, src.y - o.y) > r_ap
    idx = np.flatnonzero(keep)
    xy = np.column_stack([src.x, src.y])
    # Light of each neighbour inside the aperture, from a Moffat profile of power 2.5 (the
    # wings of real seeing; measure.mask_radius_for's profile) at the frame's FWHM: a bright
    # star's wings reach far, and how much of them falls in the aperture follows the seeing.
    # Blended: more of it in the aperture than 1 % of the star's own light, or than half the
    # star's own noise (1/snr) for faint stars, where a smaller leak is lost in the noise.
    frac = field_mode.moffat_in_aperture(r_ap, fwhm)
    reach = r_ap + 8.0 * fwhm  # the mask radius's limit: beyond it the wings are under the noise
    flux = np.clip(np.asarray(src.flux, float), 0, None)
    blended = np.zeros(idx.size, bool)
    own = frac(np.zeros(1))[0]
    for k, i in enumerate(idx):
        d = np.hypot(xy[:, 0] - xy[i, 0], xy[:, 1] - xy[i, 1])
        near = (d > 0) & (d < reach)
        leak = float(np.sum(flux[near] * frac(d[near])))
        limit = max(0.01, 0.5 / max(float(snr[i]), 1e-9))
        blended[k] = leak > limit * max(float(flux[i]), 1e-9) * own
    return xy[idx], snr[idx], blended


# ----------------------------------------------------------------------------- planning


def _resolve_position(spec: ObjectSpec, header: Any, ref_path: str) -> tuple[float, float]:
    """Pixel position on the reference frame of an object given by pixels or by sky position."""
    if spec.x is not None and spec.y is not None:
        return float(spec.x), float(spec.y)

    from tsphot import timing

    wcs = ingest.quiet_wcs(header)
    if wcs is None:
        raise SettingsError(
            f"{spec.name}: given by RA/Dec, but the reference frame {ref_path} has no WCS; "
            "give its pixel position as NAME=X,Y (0-based, on the first exposure)"
        )
    coord = timing.parse_coord(spec.ra, spec.dec)
    px, py = wcs.world_to_pixel(coord)
    return float(px), float(py)


def _resolve_motion(
    spec: ObjectSpec,
    ref: FrameInfo,
    header: Any,
    frames: list[FrameInfo],
    transform_of: Any,
) -> tuple[float, float, tuple[float, float], str]:
    """A moving target's reference-frame position at the reference epoch, its rate (px/day in
    reference pixels) and a note of how they were found.

    Pixel positions are those of the exposure nearest their time (registered onto the
    reference frame); sky positions and rates go through the reference frame's WCS.
    """
    from tsphot import timing

    t_ref = ref.jd_utc_mid
    t1 = spec.jd if spec.jd is not None else t_ref
    assert isinstance(t1, float) or t1 == t_ref

    def on_reference(px: float, py: float, t: float) -> tuple[float, float, str]:
        f = min(frames, key=lambda fr: abs(fr.jd_utc_mid - t))
        try:
            tr = transform_of(f)
        except (FrameError, InputError) as exc:
            raise SettingsError(
                f"target {spec.name!r}: its position at JD {t:.5f} is on {f.path}, which could "
                f"not be registered ({exc}); give its position on another exposure"
            ) from None
        inv = np.linalg.inv(tr.matrix)
        qx, qy = inv @ (np.array([px, py]) - np.array(tr.t))
        return float(qx), float(qy), Path(f.path).name

    wcs = ingest.quiet_wcs(header)

    def sky_to_ref(ra: Any, dec: Any) -> tuple[float, float]:
        if wcs is None:
            raise SettingsError(
                f"target {spec.name!r}: given by RA/Dec, but the reference frame {ref.path} has "
                "no WCS; give its pixel positions instead"
            )
        px, py = wcs.world_to_pixel(timing.parse_coord(ra, dec))
        return float(px), float(py)

    if spec.x is not None and spec.y is not None:
        x1, y1, f1 = on_reference(float(spec.x), float(spec.y), t1)
        how = f"position ({spec.x}, {spec.y}) px on {f1}"
    else:
        x1, y1 = sky_to_ref(spec.ra, spec.dec)
        how = f"position {spec.ra} {spec.dec} through the reference WCS"
    if spec.x2 is not None and spec.y2 is not None:
        assert isinstance(spec.jd2, float)
        x2, y2, f2 = on_reference(float(spec.x2), float(spec.y2), spec.jd2)
        rate = ((x2 - x1) / (spec.jd2 - t1), (y2 - y1) / (spec.jd2 - t1))
        how += f" and ({spec.x2}, {spec.y2}) px on {f2}"
    elif spec.ra2 is not None:
        assert isinstance(spec.jd2, float)
        x2, y2 = sky_to_ref(spec.ra2, spec.dec2)
        rate = ((x2 - x1) / (spec.jd2 - t1), (y2 - y1) / (spec.jd2 - t1))
        how += f" and {spec.ra2} {spec.dec2}"
    elif spec.rate_x is not None and spec.rate_y is not None:
        rate = (spec.rate_x * 24.0, spec.rate_y * 24.0)
        how += f", rate ({spec.rate_x}, {spec.rate_y}) px/h"
    else:
        assert spec.rate_ra is not None and spec.rate_dec is not None
        c0 = wcs.pixel_to_world(x1, y1) if wcs is not None else None
        if c0 is None:
            sky_to_ref(0.0, 0.0)  # raises the no-WCS error
        dec0 = np.radians(c0.dec.deg)
        ra_h = c0.ra.deg + spec.rate_ra / 3600.0 / np.cos(dec0)
        dec_h = c0.dec.deg + spec.rate_dec / 3600.0
        xh, yh = sky_to_ref(ra_h, dec_h)
        rate = ((xh - x1) * 24.0, (yh - y1) * 24.0)
        how += f", rate ({spec.rate_ra}, {spec.rate_dec}) arcsec/h through the reference WCS"
    x, y = x1 + rate[0] * (t_ref - t1), y1 + rate[1] * (t_ref - t1)
    return x, y, (float(rate[0]), float(rate[1])), how


def _choose_comps(
    src: detect.Sources,
    taken: list[tuple[float, float]],
    shape: tuple[int, int],
    r_ap: float,
    r_out: float,
    fwhm: float,
    saturation: float,
    max_comps: int,
    avoid: list[tuple[float, float, float]] | None = None,
) -> list[tuple[float, float]]:
    """Pick comparison stars: bright, unsaturated, isolated, away from the edges and the targets.

    `avoid` holds (x, y, radius) circles no comparison star may lie in (a moving target's track).
    """
    ny, nx = shape
    # Frames where the annulus later drifts over the edge are flagged per frame (near_edge).
    margin = r_out + 2
    chosen: list[tuple[float, float]] = []
    xy = np.column_stack([src.x, src.y])
    # a cosmic ray or hot-pixel cluster on the reference frame is no star to compare with
    star = src.star_like()
    for i in range(len(src)):
        x, y = src.x[i], src.y[i]
        if not star[i]:
            continue
        if not (margin < x < nx - 1 - margin and margin < y < ny - 1 - margin):
            continue
        # seeing changes move the peak, and cameras lose linearity before the ADU limit
        if src.peak[i] + src.background > 0.85 * saturation:
            continue
        d = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        # A neighbour near the aperture moves flux in and out as the seeing changes; a bright
        # one in the annulus biases the sky. Faint ones in the annulus are clipped away.
        crowd = (d > 0) & (
            ((d < r_ap + 3 * fwhm) & (src.flux > 0.01 * src.flux[i]))
            | ((d < r_out) & (src.flux > 0.1 * src.flux[i]))
        )
        if crowd.any():
            continue
        if any(np.hypot(x - tx, y - ty) < r_ap for tx, ty in taken):  # a target itself
            continue
        if avoid and any(np.hypot(x - ax, y - ay) < ar for ax, ay, ar in avoid):
            continue
        chosen.append((float(x), float(y)))
        if len(chosen) >= max_comps:
            break
    return chosen


def _plan_apertures(settings: Settings, fwhm: float) -> measure.Apertures:
    """Aperture radii and annulus (px) from the settings and the reference frame's FWHM (px)."""
    ks: tuple[float, ...] = ()
    if settings.aperture_fwhm is not None or settings.radii_fwhm:
        if settings.aperture is not None or settings.radii:
            raise SettingsError(
                "apertures given both in px (aperture/radii) and as multiples of the FWHM "
                "(aperture_fwhm/radii_fwhm): use one or the other"
            )
        given = [settings.aperture_fwhm] if settings.aperture_fwhm is not None else []
        ks = tuple(sorted({*given, *settings.radii_fwhm}))
        radii = tuple(round(k * fwhm, 2) for k in ks)
    elif settings.aperture is not None:
        radii = tuple(sorted({settings.aperture, *settings.radii}))
    elif settings.radii:
        radii = tuple(sorted(set(settings.radii)))
    else:
        radii = (round(max(1.6 * fwhm, 2.0), 2),)
    ann_k = settings.annulus_fwhm
    if ann_k is None and ks and settings.annulus is None:
        ann_k = (max(ks) + 2.0, max(ks) + 5.0)
    if settings.annulus is not None:
        annulus = settings.annulus
        ann_k = None
    elif ann_k is not None:
        annulus = (round(ann_k[0] * fwhm, 1), round(ann_k[1] * fwhm, 1))
    else:
        annulus = (round(max(radii) + 2.0 * fwhm, 1), round(max(radii) + 5 * fwhm, 1))
    if annulus[0] < max(radii):
        raise SettingsError(
            f"annulus inner radius {annulus[0]} px is inside the largest aperture {max(radii)} px"
        )
    return measure.Apertures(
        radii,
        annulus,
        settings.ellipticity,
        settings.position_angle,
        radii_fwhm=ks,
        annulus_fwhm=ann_k,
        per_frame=bool(ks) and settings.aperture_scaling == "per_frame",
    )


def plan_run(
    settings: Settings,
    frames: list[FrameInfo],
    out: Path,
    calibration_frames: list[FrameInfo] | None = None,
) -> tuple[Plan, dict[str, Any]]:
    """Choose the reference frame, build the masters, place every object and the apertures."""
    ok = [f for f in frames if f.status == "ok"]
    if not ok:
        raise InputError("no usable exposure: " + "; ".join(f.reason for f in frames[:5]))
    shape = ok[0].shape
    notes: dict[str, Any] = {"assumed": []}
    if settings.masters:
        # masters given (a replay): one set for every frame, kept as the run used it
        given = load_masters(settings.masters, shape)  # checked against the frames
        masters_file = str(out / "masters_0.npz")
        if Path(settings.masters).resolve() != Path(masters_file).resolve():
            shutil.copyfile(settings.masters, masters_file)
        masters_by_frame = {f.index: masters_file for f in ok}
        notes["calibration"] = {"masters": given.provenance}
    else:
        masters_by_frame = _calibration(settings, ok, calibration_frames or [], out, notes)
        masters_file = next(iter(masters_by_frame.values()), None)

    ref, ref_data, ref_header, src = None, None, None, None
    for f in ok:
        try:
            raw, header = ingest.read_pixels(f.path, f.pedestal)
            masters = _masters(masters_by_frame.get(f.index))
            data, _ = calibrate.calibrate_frame(raw, f, masters)
        except InputError:
            continue
        s = detect.find_sources(data, settings.detect_sigma, saturation=f.saturation)
        if len(s) >= 5:
            ref, ref_data, ref_header, src = f, data, header, s
            break
    if ref is None:
        raise InputError("no exposure has 5 or more detectable stars to serve as the reference")
    notes["reference_frame"] = ref.path
    notes["reference_fwhm_px"] = src.fwhm

    gain = settings.gain or ref.gain
    gain_source = "settings" if settings.gain else "header"
    if gain is None:
        # measured at 1 e-/ADU; run() estimates the gain from the stars after measuring
        gain, gain_source = 1.0, "assumed"
    saturation = settings.saturation or ref.saturation or 65535.0
    if settings.linearity_limit is not None:
        saturation = min(saturation, settings.linearity_limit)
    fwhm = src.fwhm if np.isfinite(src.fwhm) else 4.0
    aps = _plan_apertures(settings, fwhm)
    radii, annulus = aps.radii, aps.annulus

    bright = (src.peak + src.background) < 0.9 * saturation
    ref_xy = np.column_stack([src.x[bright], src.y[bright]])[:60]

    def transform_of(f: FrameInfo) -> register.Transform:
        """Reference → frame f, for placing a moving target given on another exposure."""
        if f.path == ref.path:
            return register.Transform()
        raw, _ = ingest.read_pixels(f.path, f.pedestal)
        data, _ = calibrate.calibrate_frame(raw, f, _masters(masters_by_frame.get(f.index)))
        s = detect.find_sources(data, settings.detect_sigma, saturation=saturation, max_sources=150)
        return register.match_stars(ref_xy, np.column_stack([s.x, s.y]))

    ny, nx = shape
    objects: list[PlanObject] = []
    for role, specs in (
        ("target", settings.targets),
        ("comp", settings.comps),
        ("check", settings.checks),
    ):
        for spec in specs:
            rate = None
            if spec.moving:
                if role != "target":
                    raise SettingsError(f"{role} {spec.name!r}: only targets may move")
                x, y, rate, how = _resolve_motion(spec, ref, ref_header, ok, transform_of)
                notes.setdefault("moving_targets", {})[spec.name] = {
                    "given": how,
                    "rate_px_per_h": [rate[0] / 24.0, rate[1] / 24.0],
                    "reference_pixels_at_jd": [x, y, ref.jd_utc_mid],
                }
            else:
                x, y = _resolve_position(spec, ref_header, ref.path)
            if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
                raise SettingsError(
                    f"{role} {spec.name!r} at ({x:.1f}, {y:.1f}) px is outside the reference frame "
                    f"{ref.path} ({nx}x{ny} px); positions are 0-based on the first exposure"
                )
            objects.append(
                PlanObject(
                    spec.name,
                    role,
                    x,
                    y,
                    pinned=role == "comp",
                    catalog_mag=spec.mag,
                    rate=rate,
                    epoch=ref.jd_utc_mid if rate is not None else float("nan"),
                )
            )
    if not any(o.role == "target" for o in objects):
        raise SettingsError("no target given: use --target NAME=X,Y or [[targets]] in the settings")
    # Recentre user positions on the reference frame so a position a pixel or two off still works.
    xs, ys, _ = measure.recentre(
        ref_data,
        np.array([o.x for o in objects]),
        np.array([o.y for o in objects]),
        settings.centroid_box,
        settings.max_shift,
        method=settings.centroid,
        fwhm=fwhm,
    )
    for o, x, y in zip(objects, xs, ys, strict=True):
        o.x, o.y = float(x), float(y)
    if not settings.comps:
        taken = [(o.x, o.y) for o in objects]
        # Comparison stars keep clear of a moving target's whole track through the night.
        jds = np.array([f.jd_utc_mid for f in ok if np.isfinite(f.jd_utc_mid)])
        track: list[tuple[float, float, float]] = []
        for o in objects:
            if o.rate is not None and len(jds):
                span = np.linspace(jds.min(), jds.max(), 50) - o.epoch
                track += [
                    (o.x + o.rate[0] * t, o.y + o.rate[1] * t, max(radii) + 3 * fwhm) for t in span
                ]
        for k, (x, y) in enumerate(
            _choose_comps(
                src,
                taken,
                shape,
                max(radii),
                annulus[1],
                fwhm,
                saturation,
                settings.max_comps,
                avoid=track,
            )
        ):
            objects.append(PlanObject(f"C{k + 1}", "comp", x, y))
        notes["comps_chosen"] = "automatically from the reference frame"
    if sum(o.role == "comp" for o in objects) < 2:
        raise SettingsError("fewer than 2 comparison stars: give them with --comp X,Y")

    # Detected stars of the reference frame, for masking sky annuli and flagging a moving
    # target that crosses one; a moving target's own detection is no star to mask.
    keep = np.ones(len(src), bool)
    for o in objects:
        if o.rate is not None:
            keep &= np.hypot(src.x - o.x, src.y - o.y) > 2.0
    mask_xy = np.column_stack([src.x[keep], src.y[keep]])
    mask_peak = np.asarray(src.peak, float)[keep]
    field_xy = None
    if settings.all_stars:
        field_xy, snr, blended = _field_stars(
            src, objects, shape, max(radii), annulus[1], fwhm, gain, saturation, settings.field_snr
        )
        notes["field"] = {
            "n_stars": len(field_xy),
            "snr_limit": settings.field_snr,
            "snr": snr,
            "blended": blended,
            "selection": "detected on the reference frame above the S/N limit, unsaturated, "
            "annulus inside the frame, not a target, comparison or check star",
        }
    n_sky = settings.sky_apertures
    if n_sky is None:
        n_sky = SKY_APERTURES_FIELD if settings.all_stars else SKY_APERTURES_DEFAULT
    sky_xy = None
    if n_sky > 0:
        # clear of the planned objects and of a moving target's whole track through the night
        avoid = [(o.x, o.y, max(radii) + 3 * fwhm) for o in objects]
        jds = np.array([f.jd_utc_mid for f in ok if np.isfinite(f.jd_utc_mid)])
        for o in objects:
            if o.rate is not None and len(jds):
                for t in np.linspace(jds.min(), jds.max(), 50) - o.epoch:
                    avoid.append((o.x + o.rate[0] * t, o.y + o.rate[1] * t, 3 * fwhm))
        # faint stars count too: below the run's detection limit they would still add light
        # (and its seeing-driven changes) to an "empty" aperture
        faint = detect.find_sources(ref_data, SKY_DETECT_SIGMA, saturation=saturation)
        faint = faint if len(faint) >= len(src) else src
        sky_xy = _sky_positions(
            ref_data, faint, avoid, aps, fwhm, float(gain), n_sky,
            bad_mask=_masters(masters_by_frame.get(ref.index)).bad, seed=settings.seed,
        )  # fmt: skip
        notes["sky_apertures"] = {
            "requested": int(n_sky),
            "placed": len(sky_xy),
            "selection": "random (seeded) on a grid of non-overlapping apertures on the "
            f"reference frame, clear of the wings of every source detected at "
            f"{SKY_DETECT_SIGMA:g} sigma, the planned objects, "
            "bad and NaN pixels, with an aperture sum within 2 sigma of zero and no pixel 5 "
            "sigma above the sky; measured in every "
            "frame like the stars (same transform, apertures, annulus sky) without recentring",
        }
        if len(sky_xy) < n_sky:
            log.info("only %d of %d empty-sky apertures fit on the reference", len(sky_xy), n_sky)
    plan = Plan(
        objects=objects,
        ref_path=ref.path,
        ref_xy=ref_xy,
        apertures=aps,
        masters_file=masters_file,
        gain=float(gain),
        saturation=float(saturation),
        detect_sigma=settings.detect_sigma,
        centroid_box=settings.centroid_box,
        max_shift=settings.max_shift,
        shape=shape,
        clean_cosmics=settings.clean_cosmics,
        gain_source=gain_source,
        masters_by_frame=masters_by_frame,
        linearity_limit=settings.linearity_limit,
        lacosmic=settings.lacosmic,
        read_noise=settings.read_noise or ref.read_noise,
        save_calibrated=str(out / "calibrated") if settings.save_calibrated else None,
        centroid=settings.centroid,
        sky_method=settings.sky_method,
        mask_xy=mask_xy,
        mask_peak=mask_peak,
        mask_noise=float(src.background_rms),
        mask_stars=settings.mask_stars,
        field_xy=field_xy,
        sky_xy=sky_xy,
    )
    if settings.lacosmic and plan.read_noise is None:
        notes["assumed"].append(
            "L.A.Cosmic: no read noise in the header or settings; noise from photons alone "
            "(--read-noise)"
        )
    notes["reference_header"] = ref_header
    return plan, notes


# ----------------------------------------------------------------------------- the run


def run(settings: Settings, tool: Any = None) -> dict[str, Any]:
    """Reduce a night end to end and write every product into settings.out; return the summary.

    The run's record (``records.json``: status running → done, or failed with the reason) is
    kept up to date in the output folder; pass ``tool`` to continue a record made earlier
    (status pending), e.g. by a queue.
    """
    from tsphot import records

    out = Path(settings.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(f"output folder {out}: cannot write there ({exc.strerror})") from None
    if tool is None:
        tool = records.new_tool(settings)
    tool.mark_running()
    records.RunRecords(tool=tool).write(out / "records.json")
    try:
        summary = _run(settings, out, tool)
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, TsphotError) else f"{type(exc).__name__}: {exc}"
        tool.mark_failed(reason or type(exc).__name__)
        records.RunRecords(tool=tool).write(out / "records.json")
        raise
    return summary


def _run(settings: Settings, out: Path, tool: Any) -> dict[str, Any]:
    t_start = time.time()
    if not settings.frames:
        raise SettingsError("no exposures given: tsphot run FRAMES... (files, folders or globs)")
    with Executor(settings.executor, settings.workers, settings.scheduler) as executor:
        return _stages(settings, out, tool, executor, t_start)


def _stages(
    settings: Settings, out: Path, tool: Any, executor: Executor, t_start: float
) -> dict[str, Any]:
    """The run's stages, in order, once the output folder and the executor are known good."""
    from tsphot import differential, records
    from tsphot.products import aij, export

    paths = ingest.expand_inputs(settings.frames)
    overrides = {
        "gain": settings.gain,
        "read_noise": settings.read_noise,
        "saturation": settings.saturation,
        "time_is": settings.time_keyword_is,
    }
    overrides["profile"] = settings.profile
    # Calibration frames among the inputs are sorted out by their headers (IMAGETYP).
    progress = _progress(len(paths), settings.quiet, "reading headers")
    headers = ingest.read_headers(paths, overrides, progress)
    progress(None)
    science, cal_found = calibrate.split_by_kind(headers)
    if cal_found and not science:
        raise InputError(
            f"all {len(cal_found)} frames given are calibration frames (IMAGETYP bias, dark or "
            "flat); give the science exposures too, or build a library with tsphot calibrate"
        )
    frames = ingest.order_frames(science)
    for f in frames:
        if f.status != "ok":
            log.warning("%s", f.reason)
    ok_shapes = [f.shape for f in frames if f.status == "ok"]
    settings, aij_note = aij.apply_to_settings(settings, ok_shapes[0][0] if ok_shapes else 0)
    export.check_export_settings(settings, frames)
    tool.settings = settings.model_dump(mode="json")
    _note_time_order(paths, frames)
    plan, notes = plan_run(settings, frames, out, calibration_frames=cal_found)
    if aij_note is not None:
        notes["aij_import"] = aij_note
    results = measure_all(settings, frames, plan, out, notes, executor)
    plan, results = _settle_gain(settings, frames, plan, results, notes)
    reduced = differential.reduce(settings, frames, plan, results, notes)
    field_res = None
    if plan.field_xy is not None:
        field_res = field_mode.reduce_field(settings, plan, results, reduced, notes)
    summary = export.write_products(settings, frames, plan, results, reduced, notes, out)
    summary["frames_resumed"] = notes["resumed_frames"]
    if field_res is not None:
        from tsphot.products import field_products

        summary["field"] = field_products.write_field_products(field_res, reduced, out)
    summary["elapsed_s"] = round(time.time() - t_start, 2)
    run_json = json.loads((out / "run.json").read_text())
    recs = records.records_from_run(tool, run_json, str(out))
    recs.tool.summary = {
        k: summary[k] for k in ("frames", "frames_ok", "comps_used", "radius", "elapsed_s")
    }
    recs.tool.mark_done()
    recs.write(out / "records.json")
    return summary


def rescale_results(results: list[FrameResult], factor: float) -> list[FrameResult]:
    """The frame results restated at gain factor × the gain they were measured with."""
    out = []
    for r in results:
        cols = dict(r.columns)
        cols["flux"], cols["flux_err"] = noise.rescale_gain(cols["flux"], cols["flux_err"], factor)
        if "skyap_flux" in cols:  # a background measured in ADU: its error scales with the gain
            cols["skyap_flux"] = cols["skyap_flux"] * factor
            cols["skyap_bkg_err"] = cols["skyap_bkg_err"] * factor
        if "field_flux" in cols:
            cols["field_flux"], cols["field_flux_err"] = noise.rescale_gain(
                cols["field_flux"], cols["field_flux_err"], factor
            )
        out.append(dataclasses.replace(r, columns=cols))
    return out


def _settle_gain(
    settings: Settings, frames: list[FrameInfo], plan: Plan, results: list, notes: dict
) -> tuple[Plan, list[FrameResult]]:
    """When no header or setting gives the gain, estimate it from the stars and restate fluxes."""
    from tsphot import differential

    if plan.gain_source != "assumed":
        notes["gain"] = {"value": plan.gain, "source": plan.gain_source}
        return plan, results
    est = None
    try:
        est = differential.estimate_gain(settings, frames, plan, results, notes)
    except Exception as exc:  # an estimate that fails must not cost the night
        log.warning("gain could not be estimated from the stars (%s)", exc)
    if est is None:
        notes["assumed"].append(
            "gain: no GAIN/EGAIN keyword, none given, and too few constant comparison stars to "
            "estimate it; assumed 1.0 e-/ADU — error bars scale with 1/sqrt(gain): pass --gain"
        )
        notes["gain"] = {"value": plan.gain, "source": "assumed"}
        return plan, results
    notes["assumed"].append(
        f"gain: no GAIN/EGAIN keyword and none given; estimated {est.gain:.2f} ± {est.error:.2f} "
        f"e-/ADU from {est.n_stars} comparison stars (photon transfer); pass --gain to fix it"
    )
    notes["gain"] = {
        "value": est.gain,
        "error": est.error,
        "source": "estimated",
        "method": est.method,
        "n_stars": est.n_stars,
        "per_star": est.per_star,
    }
    factor = est.gain / plan.gain
    return dataclasses.replace(plan, gain=est.gain, gain_source="estimated"), rescale_results(
        results, factor
    )


# ----------------------------------------------------------------------------- calibration


def _given_calibration(settings: Settings) -> list[FrameInfo]:
    """Frames given with --bias/--dark/--flat; the option says their kind."""
    infos = []
    for kind in ("bias", "dark", "flat"):
        for p in ingest.expand_inputs(getattr(settings, kind)):
            info = ingest.read_header(p, {"profile": settings.profile})
            if info.kind not in ("", kind) and not (kind == "dark" and info.kind == "darkflat"):
                log.warning(
                    "%s: given as %s but IMAGETYP says %s; used as %s", p, kind, info.kind, kind
                )
            info.kind = kind if info.kind != "darkflat" else info.kind
            infos.append(info)
    return infos


def _calibration(
    settings: Settings,
    frames: list[FrameInfo],
    found: list[FrameInfo],
    out: Path,
    notes: dict[str, Any],
) -> dict[int, str]:
    """Build or open the calibration library, choose masters per frame, save each set once.

    Returns frame index -> masters .npz; the library, masters and choices go into notes.
    """
    cal = _given_calibration(settings) + list(found)
    lib = None
    folder = Path(settings.library) if settings.library else out / "calibration"
    if cal:
        lib = calibrate.build_library(
            cal, folder, memory_mb=settings.memory_mb, linearity_limit=settings.linearity_limit
        )
    elif settings.library:
        lib = calibrate.load_library(settings.library)
    if lib is None or not lib.entries:
        notes["calibration"] = {}
        notes["assumed"].append("no calibration frames given: frames measured uncalibrated")
        return {}
    by_frame: dict[int, str] = {}
    sets: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    for f in frames:
        choice = calibrate.select_masters(lib, f)
        files = {k: (v.get("file"), v.get("bias_included")) for k, v in choice.items()}
        key = json.dumps(files, sort_keys=True)
        if key not in sets:
            path = str(out / f"masters_{len(sets)}.npz")
            m = calibrate.masters_for(lib, choice)
            _atomic(
                Path(path),
                lambda tmp, m=m, choice=choice: np.savez(
                    tmp, **m.arrays(), choice=np.array(json.dumps(choice))
                ),
            )
            sets[key] = (path, choice, [])
        by_frame[f.index] = sets[key][0]
        sets[key][2].append(Path(f.path).name)
    for _, choice, names in sets.values():
        for kind, c in choice.items():
            if c.get("file") is None and kind != "bpm":
                notes["assumed"].append(f"{len(names)} frames without a {kind}: {c['why']}")
    notes["calibration"] = {
        "library": str(lib.folder),
        "masters": [
            {k: e.get(k) for k in ("type", "file", "n_frames", "exptime", "filter", "night")}
            | ({"bad_pixels": e["counts"]} if "counts" in e else {})
            for e in lib.entries
        ],
        "choices": [{"frames": names, **choice} for _, choice, names in sets.values()],
        "notes": lib.notes,
    }
    return by_frame


def calibrate_command(settings: Settings) -> dict[str, Any]:
    """`tsphot calibrate`: build a library from mixed raw frames; calibrate the lights if asked."""
    if not settings.library:
        raise SettingsError("tsphot calibrate needs --library DIR (where the masters go)")
    paths = ingest.expand_inputs(settings.frames)
    overrides = {"profile": settings.profile, "gain": settings.gain}
    infos = ingest.read_headers(paths, overrides)
    science, cal = calibrate.split_by_kind(infos)
    cal += _given_calibration(settings)
    unknown = [i for i in science if i.kind != "light"]
    lib = calibrate.build_library(
        cal,
        settings.library,
        memory_mb=settings.memory_mb,
        linearity_limit=settings.linearity_limit,
    )
    summary: dict[str, Any] = {
        "library": str(lib.folder),
        "masters": [e["file"] for e in lib.entries],
        "notes": lib.notes,
        "frames": [],
        "unclassified": [Path(i.path).name for i in unknown if i.status == "ok"],
    }
    out = Path(settings.out) if settings.save_calibrated else None
    for info in science:
        if info.status != "ok":
            summary["frames"].append({"file": info.path, "status": info.status, "why": info.reason})
            continue
        choice = calibrate.select_masters(lib, info)
        row: dict[str, Any] = {"file": Path(info.path).name, "status": "ok", "choice": choice}
        if out is not None:
            try:
                raw, header = ingest.read_pixels(info.path, info.pedestal)
                data, steps = calibrate.calibrate_frame(
                    raw,
                    info,
                    calibrate.masters_for(lib, choice),
                    linearity_limit=settings.linearity_limit,
                    lacosmic=settings.lacosmic,
                    gain=settings.gain or info.gain,
                    read_noise=settings.read_noise or info.read_noise,
                )
                name = Path(info.path).name.split(".fit")[0] + "_cal.fits"
                row["written"] = calibrate.write_calibrated(
                    out / name, data, header, steps, info.sections
                )
                row["steps"] = steps
            except TsphotError as exc:  # one bad exposure never ends the run
                row.update(status="failed", why=str(exc))
        summary["frames"].append(row)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(summary, indent=1, default=str)
        _atomic(out / "calibration.json", lambda tmp: Path(tmp).write_text(text))
    return summary


def _note_time_order(paths: list[str], frames: list[FrameInfo]) -> None:
    """Say when the files' order is not their time order (they are measured in time order)."""
    rank = {p: k for k, p in enumerate(paths)}
    by_time = [f for f in frames if f.status == "ok"]
    by_list = sorted(by_time, key=lambda f: rank[f.path])
    moved = [i for i, (a, b) in enumerate(zip(by_time, by_list, strict=True)) if a is not b]
    if moved:
        i = moved[0]
        log.warning(
            "%d exposure(s) out of time order in the file list: %s is exposure %d in time, "
            "where the list has %s; all are measured and reported in time order (DATE-OBS)",
            len(moved),
            by_time[i].path,
            i + 1,
            by_list[i].path,
        )


def measure_all(
    settings: Settings,
    frames: list[FrameInfo],
    plan: Plan,
    out: Path,
    notes: dict[str, Any],
    executor: Executor,
) -> list[FrameResult]:
    """Measure every frame on the chosen executor, checkpointing each result as it arrives;
    with settings.resume, frames already in the checkpoint (same bytes, same plan) are reused."""
    key = store.plan_key(plan)
    done: dict[int, FrameResult] = {}
    with store.Checkpoint(out / store.CHECKPOINT_NAME, key, resume=settings.resume) as ckpt:
        if ckpt.saved:
            ok = [f for f in frames if f.status == "ok"]
            progress = _progress(len(ok), settings.quiet, "checking measured frames")
            for f in ok:
                rec = ckpt.saved.get(ingest.file_sha256(f.path))
                if rec is not None:
                    done[f.index] = _result_from_record(rec, f)
                progress(f)
            progress(None)
        notes["resumed_frames"] = len(done)
        if settings.resume:
            log.info("resuming: %d of %d frames already measured", len(done), len(frames))
        todo = []
        for f in frames:
            if f.index in done:
                continue
            if f.status != "ok":  # nothing to measure: its row says why
                done[f.index] = measure_frame(f, plan)
            else:
                todo.append(f)
        progress = _progress(len(frames), settings.quiet, "measuring", initial=len(done))
        for _, r in executor.map_completed(measure_frame, todo, plan):
            # "failed" means an unexpected error, which may be passing: a resume tries again
            if r.sha256 and r.status != "failed":
                ckpt.append(r.sha256, *_record_of(r))
            done[r.index] = r
            if r.status != "ok":
                log.warning("frame %s: %s", Path(r.path).name, r.reason)
            progress(r)
        progress(None)
    return [done[f.index] for f in frames]


_RECORD_FIELDS = ("status", "reason", "fwhm", "sky_level", "n_sources")


def _record_of(r: FrameResult) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A FrameResult as checkpoint fields and arrays (numbers kept exactly)."""
    fields: dict[str, Any] = {}
    arrays = dict(r.columns)
    for k in _RECORD_FIELDS:
        v = getattr(r, k)
        if isinstance(v, np.generic):  # keep numpy scalars' dtype: tables built from them match
            arrays["@" + k] = np.asarray(v)
        else:
            fields[k] = v
    if r.transform is not None:
        t = r.transform
        fields["transform"] = {
            "a": [float(v) for v in t.a],
            "t": [float(v) for v in t.t],
            "n_matched": int(t.n_matched),
            "rms": float(t.rms),
        }
    return fields, arrays


def _result_from_record(rec: dict[str, Any], info: FrameInfo) -> FrameResult:
    """Rebuild a checkpointed FrameResult for this run's frame (its path and index)."""
    f = dict(rec["fields"])
    columns = {}
    for k, v in rec["columns"].items():
        if k.startswith("@"):
            f[k[1:]] = v[()]
        else:
            columns[k] = v
    tr = f.get("transform")
    return FrameResult(
        index=info.index,
        path=info.path,
        transform=register.Transform(
            a=tuple(tr["a"]), t=tuple(tr["t"]), n_matched=tr["n_matched"], rms=tr["rms"]
        )
        if tr
        else None,
        columns=columns,
        sha256=rec["sha256"],
        **{k: f[k] for k in _RECORD_FIELDS},
    )


def _atomic(path: Path, write: Any) -> None:
    from tsphot.products.export import atomic_write

    atomic_write(path, write)


def _progress(total: int, quiet: bool, desc: str = "measuring", initial: int = 0):
    """A progress-bar step function (call with None to close); silent when quiet or not a tty."""
    import sys

    if quiet or not sys.stderr.isatty() or total == 0:
        return lambda r: None
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the process pool may then fork safely
    bar = tqdm(total=total, initial=initial, unit="frame", desc=desc, leave=False)

    def step(r: Any) -> None:
        if r is None:
            bar.close()
        else:
            bar.update(1)

    return step


def period_search(
    run_dirs: list[str],
    name: str,
    out: str | Path,
    method: str = "fourier",
    min_period: float | None = None,
    max_period: float | None = None,
    order: int = 4,
    geometry: list[tuple[float, float, float | None]] | None = None,
    ephemeris: str | None = None,
    g_slope: float = 0.15,
    shared_zero_point: bool = False,
    alcdef_meta: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`tsphot period`: join runs' light curves of one object, find its period, write products.

    Periods in days. ``geometry`` gives (r au, Δ au, phase deg or None) per run, or
    ``ephemeris`` a table to interpolate; either makes the times light-time corrected JD_UTC
    and the magnitudes reduced (asteroid mode); otherwise BJD_TDB and magnitudes as measured.
    """
    from tsphot import period as pm
    from tsphot.products import alcdef, periods

    if not run_dirs:
        raise SettingsError("tsphot period needs at least one run folder")
    if geometry is not None and len(geometry) != len(run_dirs):
        raise SettingsError(
            f"--geometry given {len(geometry)} times for {len(run_dirs)} runs: give one "
            "R,DELTA,PHASE per run folder, in the same order"
        )
    if geometry is not None and ephemeris is not None:
        raise SettingsError("give either --geometry per run or --ephemeris, not both")
    eph = periods.read_ephemeris(ephemeris) if ephemeris is not None else None
    asteroid = geometry is not None or eph is not None
    times, mags, errs, names, sessions, records = [], [], [], [], [], []
    for k, run in enumerate(run_dirs):
        t, rec = periods.read_lightcurve(run, name)
        ok = periods.usable(t)
        if ok.sum() == 0:
            log.warning("%s: no usable points of %s; left out", run, name)
            continue
        jd = np.asarray(t["JD_UTC"], float)[ok]
        mag = np.asarray(t["diff_mag"], float)[ok]
        err = np.asarray(t["diff_mag_err"], float)[ok]
        phase = None
        if asteroid:
            if geometry is not None:
                r_au, d_au, phase = geometry[k]
                r_arr, d_arr = np.full(jd.size, r_au), np.full(jd.size, d_au)
                ph_arr = None if phase is None else np.full(jd.size, phase)
            else:
                r_arr, d_arr, ph_arr = periods.interpolate_ephemeris(eph, jd, str(ephemeris))
                phase = None if ph_arr is None else float(np.mean(ph_arr))
            tt, mm = pm.asteroid_correct(jd, mag, r_arr, d_arr, ph_arr, g_slope)
        else:
            tt, mm = np.asarray(t["BJD_TDB"], float)[ok] if "BJD_TDB" in t.colnames else jd, mag
            if not np.all(np.isfinite(tt)):
                tt = jd
        times.append(tt)
        mags.append(mm)
        errs.append(err)
        names.append(Path(run).name or str(run))
        am = np.asarray(t["airmass"], float)[ok] if "airmass" in t.colnames else None
        sessions.append(alcdef.Session(jd, mag, err, am, phase_deg=phase))
        records.append(rec)
    if not times:
        raise SettingsError(f"no usable points of {name} in any of {', '.join(run_dirs)}")
    series = pm.make_series(times, mags, errs, names)
    if shared_zero_point:
        series.night = np.zeros_like(series.night)
        series.night_names = ["+".join(series.night_names)]
    span = float(np.ptp(series.t))
    lo = min_period if min_period is not None else max(span / len(series.t), 1 / 24 / 4)
    hi = max_period if max_period is not None else max(span, 2 * lo)
    res = pm.find_period(series, method, lo, hi, order=order)
    context = {
        "object": name,
        "runs": [str(r) for r in run_dirs],
        "search_min_period_d": lo,
        "search_max_period_d": hi,
        "time_system": "JD_UTC minus light time Δ/c (asteroid)" if asteroid else "BJD_TDB",
        "magnitudes": _magnitude_note(asteroid, sessions, g_slope),
        "zero_points": "one shared"
        if shared_zero_point
        else "one per night, fitted with the period",
    }
    out = Path(out)
    rec = periods.write_period_products(res, series, out, context, name)
    summary = {
        "out": str(out),
        "object": name,
        "method": res.method,
        "period_h": res.period * 24,
        "period_err_h": res.period_err * 24,
        "fap": res.fap,
        "aliases_unresolved": res.aliases_unresolved,
        "aliases_h": [
            round(a.period * 24, 6) for a in res.aliases if a.delta_chi2 < pm.ALIAS_THRESHOLD
        ],
        "notes": res.notes,
        "record": rec,
    }
    if alcdef_meta is not None:
        meta = dict(alcdef_meta)
        site = next((r.get("settings", {}).get("site") for r in records if r), None)
        if site and "OBSLATITUDE" not in meta:
            meta["OBSLATITUDE"] = f"{float(site[0]):+.4f}"
            meta["OBSLONGITUDE"] = f"{(float(site[1]) + 180) % 360 - 180:+.4f}"
        for s, rec_k in zip(sessions, records, strict=True):
            n_comp = sum(1 for c in rec_k.get("comparison_stars", []) if c.get("used"))
            s.comments.append(
                "Differential magnitudes against a weighted ensemble of "
                f"{n_comp or 'several'} comparison stars (tsphot, Everett and Howell 2001)"
            )
            s.comments.append("JD is mid-exposure UTC, not light-time corrected")
        safe = periods.safe_name(name)
        text = alcdef.write_text(meta, sessions)
        path = out / f"alcdef_{safe}.txt"
        export_atomic(path, text)
        summary["alcdef"] = str(path)
    return summary


def _magnitude_note(asteroid: bool, sessions: list, g_slope: float) -> str:
    if not asteroid:
        return "differential (diff_mag), as measured"
    note = "differential, reduced to r = Δ = 1 au"
    if any(s.phase_deg is not None for s in sessions):
        note += f" and to zero phase angle (H, G system, G = {g_slope})"
    return note


def export_atomic(path: Path, text: str) -> None:
    """Write a text product atomically."""
    from tsphot.products.export import atomic_write

    atomic_write(path, lambda p: Path(p).write_text(text))


__all__ = [
    "FrameResult",
    "Plan",
    "PlanObject",
    "TsphotError",
    "measure_frame",
    "period_search",
    "plan_run",
    "run",
]
