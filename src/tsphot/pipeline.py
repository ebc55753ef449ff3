"""Pipeline: the only place that knows the order of the stages (plan → map → reduce → products)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsphot import calibrate, detect, ingest, measure, register
from tsphot.errors import FrameError, InputError, SettingsError, TsphotError
from tsphot.executors import map_ordered
from tsphot.ingest import FrameInfo
from tsphot.settings import ObjectSpec, Settings

log = logging.getLogger("tsphot")

REGISTER_SIGMA = 15.0  # detection threshold for per-frame registration stars


@dataclass
class PlanObject:
    """One object to measure: its name, role and position on the reference frame."""

    name: str
    role: str  # target | comp | check
    x: float
    y: float
    pinned: bool = False  # a user-given comparison star
    catalog_mag: float | None = None


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


_MASTERS_CACHE: dict[str, calibrate.Masters] = {}


def _masters(path: str | None) -> calibrate.Masters:
    """Load the masters once per worker process."""
    if path is None:
        return calibrate.Masters()
    if path not in _MASTERS_CACHE:
        with np.load(path) as z:
            _MASTERS_CACHE[path] = calibrate.Masters(
                bias=z["bias"] if "bias" in z else None,
                dark_rate=z["dark_rate"] if "dark_rate" in z else None,
                flat=z["flat"] if "flat" in z else None,
            )
    return _MASTERS_CACHE[path]


def load_masters(path: str, shape: tuple[int, int]) -> calibrate.Masters:
    """Masters from a tsphot masters.npz (as a run writes it), checked against the frame size."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("bias", "dark_rate", "flat") if k in z}
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
        "sky": nan.copy(),
        "sky_std": nan.copy(),
        "n_sky": np.zeros(n_obj, int),
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
        raw, _ = ingest.read_pixels(info.path, info.pedestal)
        if raw.shape != plan.shape:
            raise FrameError(
                f"{info.path}: frame size {raw.shape[::-1]} differs from {plan.shape[::-1]}"
            )
        finite = np.isfinite(raw)
        if finite.sum() < 0.5 * raw.size:
            raise FrameError(f"{info.path}: more than half the pixels are NaN or infinite")
        if np.nanstd(raw) == 0:
            raise FrameError(f"{info.path}: image is constant ({np.nanmax(raw)} ADU); empty frame")
        data = calibrate.apply(raw, info.exptime, _masters(plan.masters_file))
        # Registration needs only the bright stars: a high threshold keeps detection cheap;
        # thin or cloudy frames fall back to the user's threshold.
        src = detect.find_sources(
            data,
            max(plan.detect_sigma, REGISTER_SIGMA),
            saturation=plan.saturation,
            max_sources=150,
        )
        if len(src) < 10:
            src = detect.find_sources(
                data, plan.detect_sigma, saturation=plan.saturation, max_sources=150
            )
        res.fwhm, res.sky_level, res.n_sources = src.fwhm, src.background, len(src)
        frm_xy = np.column_stack([src.x, src.y])
        try:
            tr = register.match_stars(plan.ref_xy, frm_xy)
        except FrameError as exc:
            raise FrameError(f"{info.path}: {exc} — {len(src)} sources detected") from None
        res.transform = tr
        x, y = tr(np.array([o.x for o in plan.objects]), np.array([o.y for o in plan.objects]))
        ny, nx = data.shape
        r_out = plan.apertures.annulus[1]
        inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
        x, y, moved = measure.recentre(data, x, y, plan.centroid_box, plan.max_shift)
        m = measure.measure_stars(
            data,
            x,
            y,
            plan.apertures,
            plan.gain,
            raw=raw,
            saturation=plan.saturation,
            fwhm=res.fwhm,
            clean_cosmics=plan.clean_cosmics,
        )
        cols = res.columns
        cols.update({k: m[k] for k in m})
        cols["x"], cols["y"], cols["recentred"] = x, y, moved
        st = np.array(["ok"] * n_obj, dtype=object)
        near_edge = (x < r_out) | (x > nx - 1 - r_out) | (y < r_out) | (y > ny - 1 - r_out)
        st[near_edge] = "near_edge"
        st[~inside] = "off_frame"
        st[(st == "ok") & m["saturated"]] = "saturated"
        st[(st == "ok") & ~np.isfinite(m["flux"][:, 0])] = "no_flux"
        cols["obj_status"] = st
    except (FrameError, InputError) as exc:
        res.status = "unregistered" if "register" in str(exc) else "bad_frame"
        res.reason = str(exc)
    except Exception as exc:  # one bad exposure never ends a run
        res.status, res.reason = "failed", f"{info.path}: {type(exc).__name__}: {exc}"
    return res


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


def _choose_comps(
    src: detect.Sources,
    taken: list[tuple[float, float]],
    shape: tuple[int, int],
    r_ap: float,
    r_out: float,
    fwhm: float,
    saturation: float,
    max_comps: int,
) -> list[tuple[float, float]]:
    """Pick comparison stars: bright, unsaturated, isolated, away from the edges and the targets."""
    ny, nx = shape
    # Frames where the annulus later drifts over the edge are flagged per frame (near_edge).
    margin = r_out + 2
    chosen: list[tuple[float, float]] = []
    xy = np.column_stack([src.x, src.y])
    for i in range(len(src)):
        x, y = src.x[i], src.y[i]
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
        chosen.append((float(x), float(y)))
        if len(chosen) >= max_comps:
            break
    return chosen


def plan_run(settings: Settings, frames: list[FrameInfo], out: Path) -> tuple[Plan, dict[str, Any]]:
    """Choose the reference frame, build the masters, place every object and the apertures."""
    ok = [f for f in frames if f.status == "ok"]
    if not ok:
        raise InputError("no usable exposure: " + "; ".join(f.reason for f in frames[:5]))
    shape = ok[0].shape
    notes: dict[str, Any] = {"assumed": []}
    if settings.masters:
        masters = load_masters(settings.masters, shape)
    else:
        masters = calibrate.build_masters(
            ingest.expand_inputs(settings.bias),
            ingest.expand_inputs(settings.dark),
            ingest.expand_inputs(settings.flat),
            shape,
        )
    masters_file = None
    if not masters.empty:
        masters_file = str(out / "masters.npz")
        arrays = {
            k: v for k in ("bias", "dark_rate", "flat") if (v := getattr(masters, k)) is not None
        }
        np.savez(masters_file, **arrays)
        _MASTERS_CACHE.pop(masters_file, None)  # a file of that name from an earlier run
        notes["calibration"] = masters.provenance
    else:
        notes["calibration"] = []
        notes["assumed"].append("no calibration frames given: frames measured uncalibrated")

    ref, ref_data, ref_header, src = None, None, None, None
    for f in ok:
        try:
            raw, header = ingest.read_pixels(f.path, f.pedestal)
        except InputError:
            continue
        data = calibrate.apply(raw, f.exptime, masters)
        s = detect.find_sources(data, settings.detect_sigma, saturation=f.saturation)
        if len(s) >= 5:
            ref, ref_data, ref_header, src = f, data, header, s
            break
    if ref is None:
        raise InputError("no exposure has 5 or more detectable stars to serve as the reference")
    notes["reference_frame"] = ref.path
    notes["reference_fwhm_px"] = src.fwhm

    gain = settings.gain or ref.gain
    if gain is None:
        gain = 1.0
        notes["assumed"].append(
            "gain: no GAIN/EGAIN keyword and none given; assumed 1.0 e-/ADU — error bars scale "
            "with sqrt(gain): pass --gain"
        )
    saturation = settings.saturation or ref.saturation or 65535.0
    fwhm = src.fwhm if np.isfinite(src.fwhm) else 4.0
    if settings.aperture is not None:
        radii = tuple(sorted({settings.aperture, *settings.radii}))
    elif settings.radii:
        radii = tuple(sorted(set(settings.radii)))
    else:
        radii = (round(max(1.6 * fwhm, 2.0), 2),)
    annulus = settings.annulus or (
        round(max(radii) + 2.0 * fwhm, 1),
        round(max(radii) + 5 * fwhm, 1),
    )
    if annulus[0] < max(radii):
        raise SettingsError(
            f"annulus inner radius {annulus[0]} px is inside the largest aperture {max(radii)} px"
        )
    aps = measure.Apertures(radii, annulus, settings.ellipticity, settings.position_angle)

    ny, nx = shape
    objects: list[PlanObject] = []
    for role, specs in (
        ("target", settings.targets),
        ("comp", settings.comps),
        ("check", settings.checks),
    ):
        for spec in specs:
            x, y = _resolve_position(spec, ref_header, ref.path)
            if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
                raise SettingsError(
                    f"{role} {spec.name!r} at ({x:.1f}, {y:.1f}) px is outside the reference frame "
                    f"{ref.path} ({nx}x{ny} px); positions are 0-based on the first exposure"
                )
            objects.append(
                PlanObject(spec.name, role, x, y, pinned=role == "comp", catalog_mag=spec.mag)
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
    )
    for o, x, y in zip(objects, xs, ys, strict=True):
        o.x, o.y = float(x), float(y)
    if not settings.comps:
        taken = [(o.x, o.y) for o in objects]
        for k, (x, y) in enumerate(
            _choose_comps(
                src, taken, shape, max(radii), annulus[1], fwhm, saturation, settings.max_comps
            )
        ):
            objects.append(PlanObject(f"C{k + 1}", "comp", x, y))
        notes["comps_chosen"] = "automatically from the reference frame"
    if sum(o.role == "comp" for o in objects) < 2:
        raise SettingsError("fewer than 2 comparison stars: give them with --comp X,Y")

    bright = (src.peak + src.background) < 0.9 * saturation
    ref_xy = np.column_stack([src.x[bright], src.y[bright]])[:60]
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
    from tsphot import differential, records
    from tsphot.products import aij, export

    t_start = time.time()
    if not settings.frames:
        raise SettingsError("no exposures given: tsphot run FRAMES... (files, folders or globs)")
    paths = ingest.expand_inputs(settings.frames)
    overrides = {
        "gain": settings.gain,
        "read_noise": settings.read_noise,
        "saturation": settings.saturation,
        "time_is": settings.time_keyword_is,
    }
    frames = ingest.ingest(paths, overrides)
    for f in frames:
        if f.status != "ok":
            log.warning("%s", f.reason)
    ok_shapes = [f.shape for f in frames if f.status == "ok"]
    settings, aij_note = aij.apply_to_settings(settings, ok_shapes[0][0] if ok_shapes else 0)
    export.check_export_settings(settings, frames)
    tool.settings = settings.model_dump(mode="json")
    plan, notes = plan_run(settings, frames, out)
    if aij_note is not None:
        notes["aij_import"] = aij_note
    results: list[FrameResult] = []
    progress = _progress(len(frames), settings.quiet)
    for r in map_ordered(
        measure_frame, frames, plan, executor=settings.executor, workers=settings.workers
    ):
        results.append(r)
        if r.status != "ok":
            log.warning("frame %s: %s", Path(r.path).name, r.reason)
        progress(r)
    progress(None)
    reduced = differential.reduce(settings, frames, plan, results, notes)
    summary = export.write_products(settings, frames, plan, results, reduced, notes, out)
    summary["elapsed_s"] = round(time.time() - t_start, 2)
    run_json = json.loads((out / "run.json").read_text())
    recs = records.records_from_run(tool, run_json, str(out))
    recs.tool.summary = {
        k: summary[k] for k in ("frames", "frames_ok", "comps_used", "radius", "elapsed_s")
    }
    recs.tool.mark_done()
    recs.write(out / "records.json")
    return summary


def _progress(total: int, quiet: bool):
    import sys

    if quiet or not sys.stderr.isatty():
        return lambda r: None
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the process pool may then fork safely
    bar = tqdm(total=total, unit="frame", desc="measuring", leave=False)

    def step(r: FrameResult | None) -> None:
        if r is None:
            bar.close()
        else:
            bar.update(1)

    return step


__all__ = ["FrameResult", "Plan", "PlanObject", "TsphotError", "measure_frame", "plan_run", "run"]
