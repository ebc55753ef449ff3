"""Products: results.ecsv, the light curves (ECSV and CSV) and run.json, written atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from tsphot import __version__
from tsphot.errors import InputError
from tsphot.ingest import FrameInfo, file_sha256
from tsphot.products.aavso import ExportError

log = logging.getLogger("tsphot")

DEPENDENCIES = (
    "numpy",
    "scipy",
    "astropy",
    "astropy-iers-data",
    "photutils",
    "sep",
    "numba",
    "batman-package",
)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write: Any) -> None:
    """Write a file via a temporary sibling and a rename: no half-written file is ever seen."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; products are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


ECSV_BLOCK_ROWS = 4096


def _write_table(table: Table, path: Path, fmt: str) -> None:
    if fmt == "ascii.ecsv":
        atomic_write(path, lambda tmp: write_ecsv_in_blocks(table, tmp))
    else:
        atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True))


def write_ecsv_in_blocks(table: Table, path: str | Path, rows: int = ECSV_BLOCK_ROWS) -> None:
    """The same bytes as ``table.write(path, format="ascii.ecsv")``, a block of rows at a time.

    astropy formats a whole table as text in memory (a string per cell) before writing it; for
    a night of thousands of frames that text, not the table, would set the run's peak memory.
    """

    def text(part: Table) -> str:
        buf = io.StringIO()
        part.write(buf, format="ascii.ecsv")
        return buf.getvalue()

    # the header and the line of column names: what a table without rows writes
    head = text(table[:0])
    n_head = len(head.splitlines(keepends=True))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, max(len(table), 1), rows):
            part = table[start : start + rows]
            body = ecsv_body(part)
            if body is not None:
                fh.write(head if start == 0 else "")
                fh.write(body)
                continue
            lines = text(part).splitlines(keepends=True)
            fh.writelines(lines if start == 0 else lines[n_head:])


# astropy writes an empty string field as "" (csv alone would write nothing): the same marker
_EMPTY = "\x00tsphot-empty\x00"


def ecsv_body(table: Table) -> str | None:
    """The data lines astropy's ECSV writer gives this table, or None where a column is not a
    plain one-dimensional number, boolean or string column (then astropy must write it)."""
    from astropy.table.serialize import represent_mixins_as_columns

    # astropy formats every cell with str() through several layers of Python per cell (about
    # 8 us); whole columns at once give the same text 3-4 times faster. Kept byte-identical
    # (tests/test_exports.py compares the two writers).
    plain = represent_mixins_as_columns(table)
    cols = []
    for c in plain.itercols():
        v = np.asarray(c)
        if v.ndim != 1 or getattr(c, "mask", None) is not None:
            return None
        kind = v.dtype.kind
        if kind == "f" and v.dtype == np.float64:
            cols.append(list(map(repr, v.tolist())))  # repr(float) is str(np.float64)
        elif kind == "f" and v.dtype == np.float32:
            cols.append(v.astype(str).tolist())  # float32's own shortest repr
        elif kind in "iu":
            cols.append(list(map(str, v.tolist())))
        elif kind == "b":
            cols.append(np.where(v, "True", "False").tolist())
        elif kind == "U":
            # astropy strips spaces and tabs off each value and quotes an empty one
            cols.append([s.strip(" \t") or _EMPTY for s in v.tolist()])
        else:
            return None
    buf = io.StringIO()
    writer = csv.writer(
        buf, delimiter=" ", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
    )
    writer.writerows(zip(*cols, strict=True))
    return buf.getvalue().replace(_EMPTY, '""')


def results_table(
    settings: Any, frames: list[FrameInfo], plan: Any, results: list, red: Any
) -> QTable:
    """One row per object per exposure with every field of the seed's result record."""
    # Built column by column from the [frame, object] arrays, not row by row: a night of
    # thousands of frames then costs a few numpy arrays, not millions of Python objects.
    k = red.radius_index
    aps = plan.apertures
    objs = plan.objects
    n_f, n_obj = len(frames), len(objs)

    def per_obj(values: list) -> np.ndarray:
        return np.tile(np.asarray(values), n_f)

    def per_frame(values: list) -> np.ndarray:
        return np.repeat(np.asarray(values), n_obj)

    def stacked(key: str, fallback: str | None = None, default: Any = np.nan) -> np.ndarray:
        rows = []
        for r in results:
            c = r.columns
            v = c.get(key, c[fallback] if fallback else None)
            rows.append(np.full(n_obj, default) if v is None else np.asarray(v))
        return np.concatenate(rows) if rows else np.empty(0)

    nan = np.full(n_obj, np.nan)
    bjd = np.column_stack(
        [red.curves[o.name].bjd_tdb if o.name in red.curves else np.full(n_f, np.nan) for o in objs]
    )
    r_frame = np.concatenate(
        [np.asarray(r.columns["radius"])[:, k] if "radius" in r.columns else nan for r in results]
    )
    ann = np.concatenate(
        [np.asarray(r.columns.get("annulus", np.full((n_obj, 2), np.nan))) for r in results]
    ).reshape(-1, 2)
    ann_bad = ~np.isfinite(ann).all(axis=1)
    ann[ann_bad] = aps.annulus
    status, reason = [], []
    for r in results:
        c = r.columns
        if r.status != "ok":
            status += [r.status] * n_obj
            reason += [r.reason] * n_obj
            continue
        own = [str(s) for s in c["obj_status"]]
        why = [_object_reason(s) for s in own]
        if "obj_reason" in c:  # names this frame's pixels, say
            why = [str(w) if w else d for w, d in zip(c["obj_reason"], why, strict=True)]
        bad_px = c.get("bad_pixel", np.zeros(n_obj, bool))
        for oi in np.flatnonzero(bad_px):
            if own[oi] == "ok":
                why[oi] = "a hot, dead or unstable pixel (calibration mask) is in the aperture"
        status += own
        reason += why
    rows = {
        "object": per_obj([o.name for o in objs]),
        "role": per_obj([o.role for o in objs]),
        "frame": per_frame([f.index for f in frames]),
        "file": per_frame([Path(f.path).name for f in frames]),
        "jd_utc": per_frame([f.jd_utc_mid for f in frames]),
        "bjd_tdb": bjd.ravel(),
        "exptime": per_frame([f.exptime for f in frames]),
        "airmass": np.repeat(np.asarray(red.airmass, float), n_obj),
        "flux": np.asarray(red.flux).ravel(),
        "flux_err": np.asarray(red.flux_err).ravel(),
        "mag": np.asarray(red.mag).ravel(),
        "mag_err": np.asarray(red.mag_err).ravel(),
        "x": stacked("x"),
        "y": stacked("y"),
        "aperture_radius": np.where(np.isfinite(r_frame), r_frame, aps.radii[k]),
        "annulus_inner": ann[:, 0],
        "annulus_outer": ann[:, 1],
        "ellipticity": np.full(n_f * n_obj, aps.ellipticity),
        "position_angle": np.full(n_f * n_obj, aps.theta_deg),
        "sky_median": stacked("sky_median", "sky"),
        "sky_mean": stacked("sky_mean", "sky"),
        "sky_mode": stacked("sky_mode", "sky"),
        "sky": stacked("sky"),
        "sky_std": stacked("sky_std"),
        "sky_area": stacked("n_sky").astype(int),
        "sky_masked": stacked("sky_masked", default=0).astype(int),
        "peak": stacked("peak"),
        "saturated": stacked("saturated").astype(bool),
        "bad_pixel": stacked("bad_pixel", default=False).astype(bool),
        "status": np.array(status, dtype=str) if status else np.empty(0, str),
        "reason": np.array(reason, dtype=str) if reason else np.empty(0, str),
    }
    t = QTable(rows)
    units = {
        "exptime": u.s,
        "flux": u.electron,
        "flux_err": u.electron,
        "mag": u.mag,
        "mag_err": u.mag,
        "x": u.pix,
        "y": u.pix,
        "aperture_radius": u.pix,
        "annulus_inner": u.pix,
        "annulus_outer": u.pix,
        "position_angle": u.deg,
        "sky_median": u.adu,
        "sky_mean": u.adu,
        "sky_mode": u.adu,
        "sky": u.adu,
        "sky_std": u.adu,
        "sky_area": u.pix**2,
        "sky_masked": u.pix**2,
        "peak": u.adu,
        "jd_utc": u.day,
        "bjd_tdb": u.day,
    }
    for col, unit in units.items():
        t[col] = t[col] * unit if not hasattr(t[col], "unit") or t[col].unit is None else t[col]
    t.meta["description"] = "tsphot per-object per-exposure photometry"
    t.meta["mag_zero_point"] = "mag = -2.5 log10(flux / exptime [e-/s]) + 25 (instrumental)"
    t.meta["mag_err"] = "CCD equation (sky noise measured in the annulus) ⊕ scintillation"
    t.meta["sky"] = (
        f"sky: the {getattr(plan, 'sky_method', 'median')} of the 3-sigma-clipped annulus "
        "(sky_median, sky_mean, sky_mode = 3 median - 2 mean all given); sky_masked: annulus "
        "pixels left out because another star lies there"
    )
    return t


def _object_reason(status: str) -> str:
    return {
        "ok": "",
        "saturated": "peak pixel at or above the saturation level; excluded from the ensemble",
        "off_frame": "outside this exposure (pointing drift)",
        "near_edge": "sky annulus crosses the frame edge",
        "no_flux": "no measurable flux",
    }.get(status, status)


def lightcurve_table(name: str, red: Any, frames: list[FrameInfo], results: list) -> QTable:
    """The differential light curve of one target or check star, with the ensemble's columns."""
    c = red.curves[name]
    ens = red.ensemble
    t = QTable()
    t["BJD_TDB"] = c.bjd_tdb * u.day
    t["JD_UTC"] = red.jd_utc * u.day
    t["rel_flux"] = c.rel_flux
    t["rel_flux_err"] = c.rel_flux_err
    t["diff_mag"] = c.diff_mag * u.mag
    t["diff_mag_err"] = c.diff_mag_err * u.mag
    t["airmass"] = red.airmass
    t["ens_offset"] = ens.offset * u.mag
    t["ens_offset_err"] = ens.offset_err * u.mag
    t["ens_n_stars"] = ens.n_used_per_frame
    t["scintillation"] = red.scint
    t["transparency"] = red.transparency
    if c.std_mag is not None and red.mag_scale is not None:
        t["mag"] = c.std_mag * u.mag
        t.meta["mag_scale"] = red.mag_scale
    for term, values in red.terms.get(name, {}).items():
        t[f"noise_{term}"] = values  # fractional 1-sigma of each term of the noise model
    t["fwhm"] = np.array([r.fwhm for r in results]) * u.pix
    t["sky"] = np.array([r.sky_level for r in results]) * u.adu
    t["file"] = [Path(f.path).name for f in frames]
    t["valid"] = c.valid
    outlier = c.outlier if c.outlier is not None else np.zeros(len(t), bool)
    oi = next(i for i, o in enumerate(red.object_names) if o == name)
    # the object's own status in each frame (saturated, off_frame, ...) when the frame was ok
    own = [str(r.columns["obj_status"][oi]) for r in results]
    t["saturated"] = np.array([bool(r.columns["saturated"][oi]) for r in results])
    bright = red.bright_sky if len(red.bright_sky) else np.zeros(len(t), bool)
    t["status"] = [
        "ok"
        if v
        else "outlier"
        if o
        else r.status
        if r.status != "ok"
        else s
        if s != "ok"
        else "cloud"
        if cl
        else "bright_sky"
        if br
        else "excluded"
        for v, o, r, cl, s, br in zip(
            c.valid, outlier, results, red.cloudy, own, bright, strict=True
        )
    ]
    # frame quality, whether or not the point is used: cloud, thin_cloud, bright_sky and why
    t["quality"] = red.quality if red.quality else ["clear"] * len(t)
    t["quality_reason"] = red.quality_reason if red.quality_reason else ["-"] * len(t)
    if c.fit is not None:
        model = np.full(len(t), np.nan)
        model[c.fit_mask] = c.fit.model
        t["model"] = model
        detr = np.full(len(t), np.nan)
        detr[c.fit_mask] = c.rel_flux[c.fit_mask] / c.fit.baseline
        t["detrended_flux"] = detr
    t.meta["object"] = name
    t.meta["role"] = c.role
    t.meta["aperture_radius_px"] = red.radius
    return t


def ensemble_table(red: Any, frames: list[FrameInfo]) -> QTable:
    """Every comparison star's leave-one-out curve (against the others) per frame, with the
    ensemble's offset; weights, use and reasons in the metadata."""
    ens = red.ensemble
    t = QTable()
    t["JD_UTC"] = red.jd_utc * u.day
    t["file"] = [Path(f.path).name for f in frames]
    t["ens_offset"] = ens.offset * u.mag
    t["ens_offset_err"] = ens.offset_err * u.mag
    t["ens_n_stars"] = ens.n_used_per_frame
    for j, name in enumerate(ens.names):
        t[f"loo_{name}"] = ens.loo_mag[:, j] * u.mag
        t[f"loo_err_{name}"] = ens.loo_err[:, j] * u.mag
    t.meta["comparison_stars"] = [
        {"name": n, "used": bool(us), "weight": float(w), "reason": r}
        for n, us, w, r in zip(ens.names, ens.used, ens.weights, ens.reasons, strict=True)
    ]
    t.meta["aperture_radius_px"] = red.radius
    return t


def versions() -> dict[str, str]:
    """Versions of tsphot, Python and the dependencies that shape the numbers."""
    return _versions()


def _versions() -> dict[str, str]:
    out = {"tsphot": __version__, "python": platform.python_version()}
    for dep in (*DEPENDENCIES, "matplotlib", "pydantic", "pyarrow", "pandas"):
        try:
            out[dep] = metadata.version(dep)
        except metadata.PackageNotFoundError:
            out[dep] = "not installed"
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def key_header_values(f: FrameInfo) -> dict[str, Any]:
    """The header values a manifest keeps for one exposure (as tsphot read them)."""
    return {
        "date_obs": f.date_obs,
        "exptime": f.exptime,
        "filter": f.filter,
        "imagetyp": f.imagetyp,
        "object": f.object,
        "shape": list(f.shape),
        "binning": list(f.binning),
        "gain": f.gain,
        "airmass": f.airmass,
        "profile": f.profile,
    }


def safe_name(name: str) -> str:
    """An object name as it appears in file names."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def sky_positions(settings: Any, plan: Any, notes: dict) -> dict[str, tuple[float, float]]:
    """RA, Dec (deg) of every object: as given in the settings, else from the reference WCS."""
    from tsphot import ingest, timing

    out: dict[str, tuple[float, float]] = {}
    header = notes.get("reference_header")
    wcs = ingest.quiet_wcs(header) if header is not None else None
    specs = {s.name: s for s in [*settings.targets, *settings.comps, *settings.checks]}
    for o in plan.objects:
        spec = specs.get(o.name)
        try:
            if spec is not None and spec.ra is not None:
                c = timing.parse_coord(spec.ra, spec.dec)
            elif wcs is not None:
                c = wcs.pixel_to_world(o.x, o.y)
            else:
                continue
            out[o.name] = (float(c.ra.deg), float(c.dec.deg))
        except Exception:  # a position that cannot be converted is simply not given
            continue
    return out


def run_record(
    settings: Any, frames: list[FrameInfo], plan: Any, results: list, red: Any, notes: dict
) -> dict:
    """The run.json record: settings, versions, inputs with hashes, per-object summary."""
    ens = red.ensemble
    sky = sky_positions(settings, plan, notes)
    comps = []
    for j, name in enumerate(ens.names):
        oi = int(red.comp_index[j])
        comps.append(
            {
                "name": name,
                "x": plan.objects[oi].x,
                "y": plan.objects[oi].y,
                "catalog_mag": plan.objects[oi].catalog_mag,
                "ra_deg": sky.get(name, (None, None))[0],
                "dec_deg": sky.get(name, (None, None))[1],
                "used": bool(ens.used[j]),
                "weight": float(ens.weights[j]),
                "rms_mag": float(ens.rms[j]),
                "expected_mag": float(ens.expected[j]),
                "chi2_red": float(ens.chi2_red[j]),
                "reason": ens.reasons[j],
            }
        )
    objects = {}
    by_name = {o.name: o for o in plan.objects}
    for name, c in red.curves.items():
        entry: dict[str, Any] = {
            "role": c.role,
            "x": by_name[name].x,
            "y": by_name[name].y,
            "catalog_mag": by_name[name].catalog_mag,
            "ra_deg": sky.get(name, (None, None))[0],
            "dec_deg": sky.get(name, (None, None))[1],
            "frames_measured": int(c.valid.sum()),
            "outlier_frames": [int(i) for i in np.nonzero(c.outlier)[0]]
            if c.outlier is not None
            else [],
            "rms_rel_flux": c.rms,
            "median_err_rel_flux": c.median_err,
            "coord_source": notes.get("coord_source", {}).get(name),
        }
        if c.fit is not None:
            entry["fit"] = {
                "params": c.fit.params,
                "errors": c.fit.errors,
                "intervals": {
                    k: {lvl: list(v) for lvl, v in by.items()} for k, by in c.fit.intervals.items()
                },
                "detection_sigma": c.fit.detection_sigma,
                "notes": c.fit.notes,
                "chi2_red": c.fit.chi2_red,
                "residual_rms": c.fit.residual_rms,
                "terms": c.fit.terms,
                "bic": c.fit.bic,
            }
        if name in red.budget:
            b = red.budget[name]
            entry["noise"] = {k: b[k] for k in ("predicted", "achieved", "achieved_from", "ratio")}
            entry["noise"]["terms"] = b["terms"]
        objects[name] = entry
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    record = {
        "schema": "tsphot.run/1",
        "tsphot_version": __version__,
        "versions": _versions(),
        "settings": settings.model_dump(mode="json"),
        "assumed": notes.get("assumed", []),
        "calibration": notes.get("calibration", []),
        "reference_frame": notes.get("reference_frame"),
        "reference_fwhm_px": notes.get("reference_fwhm_px"),
        "moving_targets": notes.get("moving_targets", {}),
        "frame_quality": {
            Path(f.path).name: {"flags": q, "reason": why}
            for f, q, why in zip(frames, red.quality, red.quality_reason, strict=False)
            if q != "clear"
        },
        "site_source": notes.get("site_source"),
        "airmass_source": notes.get("airmass_source"),
        "scintillation": notes.get("scintillation"),
        "gain_e_per_adu": plan.gain,
        "gain": notes.get("gain"),
        "saturation_adu": plan.saturation,
        "image_shape": list(plan.shape),
        "aij_import": notes.get("aij_import"),
        "apertures": {
            "radii_px": list(plan.apertures.radii),
            "chosen_radius_px": red.radius,
            "scatter_by_radius": red.scatter_by_radius,
            "annulus_px": list(plan.apertures.annulus),
            "radii_fwhm": list(plan.apertures.radii_fwhm),
            "annulus_fwhm": list(plan.apertures.annulus_fwhm or []),
            "scaling": "per_frame"
            if plan.apertures.per_frame
            else "fwhm_of_reference_frame"
            if plan.apertures.radii_fwhm
            else "fixed_px",
            "centroid": getattr(plan, "centroid", "com"),
            "sky_method": getattr(plan, "sky_method", "median"),
            "stars_masked_in_annulus": getattr(plan, "mask_xy", None) is not None,
        },
        "frames": {"total": len(frames), "by_status": statuses},
        "inputs": [
            {
                "path": f.path,
                # hashed by the worker as it read the frame; others are hashed here
                "sha256": getattr(r, "sha256", "")
                or (file_sha256(f.path) if os.path.exists(f.path) else None),
                "status": r.status,
                "reason": r.reason,
                "jd_utc_mid": f.jd_utc_mid,
                "abs_path": os.path.abspath(f.path),
                "exptime": f.exptime,
                "filter": f.filter,
                "binning": list(f.binning),
                "header": key_header_values(f),
            }
            for f, r in zip(frames, results, strict=True)
        ],
        "comparison_stars": comps,
        "ensemble_iterations": ens.iterations,
        "objects": objects,
        "noise_budget": red.budget,
        # the background noise the CCD equation misses, measured on empty-sky apertures
        "background_excess": {
            **(notes.get("background_excess") or {}),
            "applied_var_e2_at_chosen_radius": float(getattr(red, "excess_var", 0.0)),
            "apertures": notes.get("sky_apertures"),
            "series": "sky_apertures.ecsv" if getattr(plan, "sky_xy", None) is not None else None,
        },
        "mag_scale": red.mag_scale,
        "radius_chosen_by": notes.get("radius_chosen_by"),
        "scatter_by_radius": {str(k): v for k, v in red.scatter_by_radius.items()},
        "fit_notes": {k: notes[k] for k in ("fit_failed", "fit_skipped") if k in notes},
        "resumed_frames": notes.get("resumed_frames", 0),
        "field": notes.get("field"),  # field mode (--all-stars) summary
    }
    return _jsonable(record)


def sky_apertures_table(plan: Any, results: list) -> Table | None:
    """The empty-sky apertures' series: one row per aperture and frame (None if none)."""
    sky_xy = getattr(plan, "sky_xy", None)
    if sky_xy is None or len(sky_xy) == 0:
        return None
    n_s, radii = len(sky_xy), list(plan.apertures.radii)
    rows: dict[str, list] = {k: [] for k in ("frame", "aperture", "x_ref", "y_ref", "x", "y")}
    rows["status"] = []
    flux, err = [], []
    for i, r in enumerate(results):
        c = r.columns
        has = r.status == "ok" and "skyap_flux" in c
        rows["frame"] += [i] * n_s
        rows["aperture"] += list(range(n_s))
        rows["x_ref"] += list(sky_xy[:, 0])
        rows["y_ref"] += list(sky_xy[:, 1])
        rows["x"] += list(c["skyap_x"]) if has else [np.nan] * n_s
        rows["y"] += list(c["skyap_y"]) if has else [np.nan] * n_s
        rows["status"] += list(c["skyap_status"]) if has else [r.status] * n_s
        flux.append(c["skyap_flux"] if has else np.full((n_s, len(radii)), np.nan))
        err.append(c["skyap_bkg_err"] if has else np.full((n_s, len(radii)), np.nan))
    t = Table(rows)
    f, e = np.vstack(flux), np.vstack(err)
    for k, rad in enumerate(radii):
        t[f"flux_r{rad:g}"] = f[:, k] * u.electron
        t[f"predicted_err_r{rad:g}"] = e[:, k] * u.electron
    t.meta["description"] = (
        "empty-sky apertures: sky-subtracted sums (true flux 0) and the CCD equation's "
        "background error of each; their scatter against it is the background excess in run.json"
    )
    return t


def write_products(
    settings: Any,
    frames: list[FrameInfo],
    plan: Any,
    results: list,
    red: Any,
    notes: dict,
    out: Path,
) -> dict[str, Any]:
    """Write results.ecsv, the light curves, run.json, the pictures, report.html and any exports
    asked for; return a short summary."""
    from tsphot.products import plots, report

    out = Path(out)
    _write_table(
        results_table(settings, frames, plan, results, red), out / "results.ecsv", "ascii.ecsv"
    )
    curves = {}
    for name in red.curves:
        t = lightcurve_table(name, red, frames, results)
        safe = safe_name(name)
        _write_table(t, out / f"lightcurve_{safe}.ecsv", "ascii.ecsv")
        plain = Table(t)
        for col in plain.colnames:
            plain[col].unit = None
        _write_table(plain, out / f"lightcurve_{safe}.csv", "ascii.csv")
        curves[name] = t
    _write_table(ensemble_table(red, frames), out / "ensemble.ecsv", "ascii.ecsv")
    sky = sky_apertures_table(plan, results)
    if sky is not None:
        _write_table(sky, out / "sky_apertures.ecsv", "ascii.ecsv")
    record = run_record(settings, frames, plan, results, red, notes)
    atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    pictures = plots.write_all(settings, frames, plan, results, red, notes, curves, out)
    export_errors: dict[str, str] = {}
    if settings.exports:
        products = load_products(out)
        for fmt in settings.exports:
            try:
                write_exports([fmt], products, out / "exports", settings.model_dump())
            except ExportError as exc:  # an optional format must not lose the run
                log.warning("export %s not written: %s", fmt, exc)
                export_errors[fmt] = str(exc)
        if export_errors:
            record["export_errors"] = export_errors
            atomic_write(
                out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2))
            )
    report.write_report(out, pictures=pictures)
    ens = red.ensemble
    return {
        "out": str(out),
        "frames": len(frames),
        "frames_ok": int(sum(r.status == "ok" for r in results)),
        "frames_bad": {r.path: r.reason for r in results if r.status != "ok"},
        "comps_used": int(ens.used.sum()),
        "comps_rejected": {
            n: why for n, why, u_ in zip(ens.names, ens.reasons, ens.used, strict=True) if not u_
        },
        "radius": red.radius,
        "objects": record["objects"],
        "pictures": [str(p) for p in pictures],
        "report": str(out / "report.html"),
        "export_errors": export_errors,
    }


# ----------------------------------------------------------------------------- exports


def check_export_settings(settings: Any, frames: list[FrameInfo]) -> None:
    """Before any work: the settings an AAVSO export needs are there (observer code, filter)."""
    from tsphot.errors import SettingsError
    from tsphot.products import aavso

    wanted = [f for f in settings.exports if f.startswith("aavso")]
    if not wanted:
        return
    ok = [f for f in frames if f.status == "ok"]
    try:
        aavso._check_obscode(settings.observer_code)
        aavso.filter_code(settings.aavso_filter, [f.filter for f in ok])
        if "aavso-exoplanet" in wanted:
            if settings.obstype not in ("CCD", "DSLR"):
                raise ExportError(f"OBSTYPE {settings.obstype}: the format takes CCD or DSLR")
            if len(settings.observer_code or "") > 5:
                raise ExportError("the exoplanet format takes observer codes of 5 characters")
            longest = max((f.exptime for f in ok), default=0.0)
            if longest > 600:
                raise ExportError(
                    f"exposures of {longest:g} s: the AAVSO exoplanet format takes at most 600 s"
                )
    except ExportError as exc:
        raise SettingsError(f"export {wanted[0]}: {exc}") from None


@dataclass
class RunProducts:
    """A finished run read back from its folder: the tables and run.json."""

    run_dir: Path
    results: QTable
    curves: dict[str, QTable]
    record: dict[str, Any]

    def by_role(self, role: str) -> dict[str, QTable]:
        """Light curves of the objects with this role (target, check)."""
        return {n: t for n, t in self.curves.items() if t.meta.get("role") == role}


def load_products(run_dir: str | Path) -> RunProducts:
    """Read a run folder's results.ecsv, light curves and run.json."""
    run_dir = Path(run_dir)
    missing = [f for f in ("run.json", "results.ecsv") if not (run_dir / f).exists()]
    if missing:
        raise InputError(
            f"{run_dir}: not a tsphot run folder (no {', '.join(missing)}); give the --out "
            "folder of a finished `tsphot run`"
        )
    record = json.loads((run_dir / "run.json").read_text())
    results = _read_ecsv(run_dir / "results.ecsv")
    curves = {}
    for name in record.get("objects", {}):
        path = run_dir / f"lightcurve_{safe_name(name)}.ecsv"
        if path.exists():
            curves[name] = _read_ecsv(path)
    return RunProducts(run_dir, results, curves, record)


def _read_ecsv(path: Path) -> QTable:
    """Read a product table; empty strings stay empty strings (astropy reads them as masked)."""
    return _unmask_text(QTable.read(path, format="ascii.ecsv"))


def _unmask_text(t: QTable) -> QTable:
    for name in t.colnames:
        col = t[name]
        if hasattr(col, "mask") and col.dtype.kind in "UOS":
            t[name] = col.filled("")
    return t


def _ascii_safe(text: str) -> str:
    """Text for a FITS header or string column (ASCII only)."""
    import unicodedata

    text = text.replace("—", "-").replace("–", "-").replace("⊕", "(+)").replace("×", "x")
    return unicodedata.normalize("NFKD", text).encode("ascii", "replace").decode("ascii")


def _for_fits(t: QTable) -> QTable:
    import warnings

    out = QTable(t, copy=True)
    for name in out.colnames:
        if out[name].dtype.kind in "UO":
            out[name] = [_ascii_safe(str(v)) for v in out[name]]
    meta = {}
    for k, v in out.meta.items():
        meta[k] = _ascii_safe(v) if isinstance(v, str) else v
    out.meta.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.meta.update(meta)
    return out


TABLE_FORMATS = {
    "ecsv": ("ecsv", "ascii.ecsv"),
    "csv": ("csv", "ascii.csv"),
    "fits": ("fits", "fits"),
    "parquet": ("parquet", "parquet"),
}


def write_table_as(table: QTable, path: Path, fmt: str) -> None:
    """Write one table in ecsv, csv, fits or parquet, with units and metadata where the format
    keeps them (CSV keeps units as a comment line)."""
    import warnings

    _suffix, astropy_fmt = TABLE_FORMATS[fmt]
    t = table
    if fmt == "csv":
        t = Table(table)
        units = {c: str(t[c].unit) for c in t.colnames if t[c].unit is not None}
        for c in t.colnames:
            t[c].unit = None
        t.meta = {
            "comments": ["units: " + ", ".join(f"{c} [{u}]" for c, u in units.items())]
            if units
            else []
        }
    elif fmt == "fits":
        t = _for_fits(table)
    elif fmt == "parquet":
        try:
            import pandas  # noqa: F401  (astropy reads parquet through it)
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError(
                "Parquet needs pyarrow and pandas: pip install 'tsphot[parquet]'"
            ) from None
    kw = {"comment": "# "} if fmt == "csv" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITS: HIERARCH cards for long meta keys
        atomic_write(path, lambda tmp: t.write(tmp, format=astropy_fmt, overwrite=True, **kw))


def read_table_as(path: Path, fmt: str) -> QTable:
    """Read back a table written by write_table_as."""
    _, astropy_fmt = TABLE_FORMATS[fmt]
    if fmt == "csv":
        t = QTable.read(path, format="ascii.csv", comment="#")
    else:
        t = QTable.read(path, format=astropy_fmt)
    return _unmask_text(t)


def write_exports(
    formats: list[str],
    products: RunProducts,
    out_dir: str | Path,
    settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> list[Path]:
    """Write each requested format from a run's products into out_dir; return the files.

    settings: the run's settings (default: those in run.json); overrides (observer_code,
    aavso_filter, aavso_chart, obstype, exoplanet_name) win over them.
    """
    from tsphot.products import aavso, aij

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = dict(settings if settings is not None else products.record.get("settings", {}))
    s.update({k: v for k, v in overrides.items() if v is not None})
    written: list[Path] = []
    header_filters = [i.get("filter", "") for i in products.record.get("inputs", [])
                      if i.get("status") == "ok"]  # fmt: skip
    for fmt in formats:
        if fmt in TABLE_FORMATS:
            suffix = TABLE_FORMATS[fmt][0]
            path = out_dir / f"results.{suffix}"
            write_table_as(products.results, path, fmt)
            written.append(path)
            for name, t in products.curves.items():
                path = out_dir / f"lightcurve_{safe_name(name)}.{suffix}"
                write_table_as(t, path, fmt)
                written.append(path)
        elif fmt == "aavso-extended":
            targets = products.by_role("target")
            code = aavso.filter_code(s.get("aavso_filter"), header_filters)
            text = aavso.extended_report(
                targets,
                products.by_role("check"),
                products.results,
                products.record,
                observer_code=s.get("observer_code"),
                filter_code_=code,
                chart=s.get("aavso_chart") or "na",
                obstype=s.get("obstype") or "CCD",
            )
            path = out_dir / "aavso_extended.txt"
            atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
            written.append(path)
        elif fmt == "aavso-exoplanet":
            code = aavso.filter_code(s.get("aavso_filter"), header_filters)
            for name, lc in products.by_role("target").items():
                text = aavso.exoplanet_report(
                    name,
                    lc,
                    products.results,
                    products.record,
                    s,
                    observer_code=s.get("observer_code"),
                    filter_code_=code,
                    planet_name=s.get("exoplanet_name"),
                    obstype=s.get("obstype") or "CCD",
                )
                path = out_dir / f"aavso_exoplanet_{safe_name(name)}.txt"
                atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
                written.append(path)
        elif fmt == "aij":
            table, _ = aij.measurements_table(products.results, products.curves, products.record)
            path = out_dir / "measurements_aij.tbl"
            aij.write_measurements(table, path)
            written.append(path)
            objs = _objects_for_aij(products)
            height = int(products.record.get("image_shape", [0, 0])[0])
            ap = products.record.get("apertures", {})
            path = out_dir / "tsphot.apertures"
            aij.write_apertures(
                path, objs, height, ap.get("chosen_radius_px"), tuple(ap.get("annulus_px"))
            )
            written.append(path)
            if all(o.get("ra") is not None for o in objs):
                path = out_dir / "tsphot.radec"
                aij.write_radec(path, objs)
                written.append(path)
        else:
            raise ExportError(f"unknown export format {fmt!r}")
    return written


def _objects_for_aij(products: RunProducts) -> list[dict[str, Any]]:
    """The run's objects in AstroImageJ order (targets, checks, then comparison stars)."""
    rec = products.record
    objs = []
    for name, o in rec.get("objects", {}).items():
        objs.append({"name": name, "role": o["role"], "x": o.get("x"), "y": o.get("y"),
                     "ra": o.get("ra_deg"), "dec": o.get("dec_deg"),
                     "mag": o.get("catalog_mag")})  # fmt: skip
    for c in rec.get("comparison_stars", []):
        objs.append({"name": c["name"], "role": "comp", "x": c["x"], "y": c["y"],
                     "ra": c.get("ra_deg"), "dec": c.get("dec_deg"),
                     "mag": c.get("catalog_mag")})  # fmt: skip
    objs.sort(key=lambda o: {"target": 0, "check": 1}.get(o["role"], 2))
    return [o for o in objs if o["x"] is not None]
