"""Products: results.ecsv, the light curves (ECSV and CSV) and run.json, written atomically."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from tsphot import __version__
from tsphot.ingest import FrameInfo, file_sha256

DEPENDENCIES = (
    "numpy",
    "scipy",
    "astropy",
    "astropy-iers-data",
    "photutils",
    "sep",
    "batman-package",
)


def atomic_write(path: Path, write: Any) -> None:
    """Write a file via a temporary sibling and a rename: no half-written file is ever seen."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_table(table: Table, path: Path, fmt: str) -> None:
    atomic_write(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True))


def results_table(
    settings: Any, frames: list[FrameInfo], plan: Any, results: list, red: Any
) -> QTable:
    """One row per object per exposure with every field of the seed's result record."""
    k = red.radius_index
    aps = plan.apertures
    rows: dict[str, list] = {
        c: []
        for c in (
            "object",
            "role",
            "frame",
            "file",
            "jd_utc",
            "bjd_tdb",
            "exptime",
            "airmass",
            "flux",
            "flux_err",
            "mag",
            "mag_err",
            "x",
            "y",
            "aperture_radius",
            "annulus_inner",
            "annulus_outer",
            "ellipticity",
            "position_angle",
            "sky_median",
            "sky_std",
            "sky_area",
            "peak",
            "saturated",
            "bad_pixel",
            "status",
            "reason",
        )
    }
    for fi, (f, r) in enumerate(zip(frames, results, strict=True)):
        for oi, o in enumerate(plan.objects):
            c = r.columns
            st = r.status if r.status != "ok" else str(c["obj_status"][oi])
            reason = r.reason if r.status != "ok" else _object_reason(st)
            curve = red.curves.get(o.name)
            rows["object"].append(o.name)
            rows["role"].append(o.role)
            rows["frame"].append(f.index)
            rows["file"].append(Path(f.path).name)
            rows["jd_utc"].append(f.jd_utc_mid)
            rows["bjd_tdb"].append(curve.bjd_tdb[fi] if curve is not None else np.nan)
            rows["exptime"].append(f.exptime)
            rows["airmass"].append(red.airmass[fi])
            rows["flux"].append(red.flux[fi, oi])
            rows["flux_err"].append(red.flux_err[fi, oi])
            rows["mag"].append(red.mag[fi, oi])
            rows["mag_err"].append(red.mag_err[fi, oi])
            rows["x"].append(c["x"][oi])
            rows["y"].append(c["y"][oi])
            rows["aperture_radius"].append(aps.radii[k])
            rows["annulus_inner"].append(aps.annulus[0])
            rows["annulus_outer"].append(aps.annulus[1])
            rows["ellipticity"].append(aps.ellipticity)
            rows["position_angle"].append(aps.theta_deg)
            rows["sky_median"].append(c["sky"][oi])
            rows["sky_std"].append(c["sky_std"][oi])
            rows["sky_area"].append(int(c["n_sky"][oi]))
            rows["peak"].append(c["peak"][oi])
            rows["saturated"].append(bool(c["saturated"][oi]))
            bad_px = bool(c.get("bad_pixel", np.zeros(len(plan.objects), bool))[oi])
            rows["bad_pixel"].append(bad_px)
            if bad_px and st == "ok":
                reason = "a hot, dead or unstable pixel (calibration mask) is in the aperture"
            rows["status"].append(st)
            rows["reason"].append(reason)
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
        "sky_std": u.adu,
        "sky_area": u.pix**2,
        "peak": u.adu,
        "jd_utc": u.day,
        "bjd_tdb": u.day,
    }
    for col, unit in units.items():
        t[col] = t[col] * unit if not hasattr(t[col], "unit") or t[col].unit is None else t[col]
    t.meta["description"] = "tsphot per-object per-exposure photometry"
    t.meta["mag_zero_point"] = "mag = -2.5 log10(flux / exptime [e-/s]) + 25 (instrumental)"
    t.meta["mag_err"] = "CCD equation (sky noise measured in the annulus) ⊕ scintillation"
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
    t["status"] = [
        "ok"
        if v
        else "outlier"
        if o
        else r.status
        if r.status != "ok"
        else "cloud"
        if cl
        else "excluded"
        for v, o, r, cl in zip(c.valid, outlier, results, red.cloudy, strict=True)
    ]
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


def _versions() -> dict[str, str]:
    out = {"tsphot": __version__, "python": platform.python_version()}
    for dep in DEPENDENCIES:
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


def run_record(
    settings: Any, frames: list[FrameInfo], plan: Any, results: list, red: Any, notes: dict
) -> dict:
    """The run.json record: settings, versions, inputs with hashes, per-object summary."""
    ens = red.ensemble
    comps = []
    for j, name in enumerate(ens.names):
        oi = int(red.comp_index[j])
        comps.append(
            {
                "name": name,
                "x": plan.objects[oi].x,
                "y": plan.objects[oi].y,
                "used": bool(ens.used[j]),
                "weight": float(ens.weights[j]),
                "rms_mag": float(ens.rms[j]),
                "expected_mag": float(ens.expected[j]),
                "chi2_red": float(ens.chi2_red[j]),
                "reason": ens.reasons[j],
            }
        )
    objects = {}
    for name, c in red.curves.items():
        entry: dict[str, Any] = {
            "role": c.role,
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
        "site_source": notes.get("site_source"),
        "airmass_source": notes.get("airmass_source"),
        "scintillation": notes.get("scintillation"),
        "gain_e_per_adu": plan.gain,
        "gain": notes.get("gain"),
        "saturation_adu": plan.saturation,
        "apertures": {
            "radii_px": list(plan.apertures.radii),
            "chosen_radius_px": red.radius,
            "scatter_by_radius": red.scatter_by_radius,
            "annulus_px": list(plan.apertures.annulus),
        },
        "frames": {"total": len(frames), "by_status": statuses},
        "inputs": [
            {
                "path": f.path,
                "sha256": file_sha256(f.path) if os.path.exists(f.path) else None,
                "status": r.status,
                "reason": r.reason,
                "jd_utc_mid": f.jd_utc_mid,
            }
            for f, r in zip(frames, results, strict=True)
        ],
        "comparison_stars": comps,
        "ensemble_iterations": ens.iterations,
        "objects": objects,
        "noise_budget": red.budget,
        "mag_scale": red.mag_scale,
        "radius_chosen_by": notes.get("radius_chosen_by"),
        "scatter_by_radius": {str(k): v for k, v in red.scatter_by_radius.items()},
        "fit_notes": {k: notes[k] for k in ("fit_failed", "fit_skipped") if k in notes},
    }
    return _jsonable(record)


def write_products(
    settings: Any,
    frames: list[FrameInfo],
    plan: Any,
    results: list,
    red: Any,
    notes: dict,
    out: Path,
) -> dict[str, Any]:
    """Write results.ecsv, the light curves, the plot and run.json; return a short summary."""
    from tsphot.products import plots

    out = Path(out)
    _write_table(
        results_table(settings, frames, plan, results, red), out / "results.ecsv", "ascii.ecsv"
    )
    curves = {}
    for name in red.curves:
        t = lightcurve_table(name, red, frames, results)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        _write_table(t, out / f"lightcurve_{safe}.ecsv", "ascii.ecsv")
        plain = Table(t)
        for col in plain.colnames:
            plain[col].unit = None
        _write_table(plain, out / f"lightcurve_{safe}.csv", "ascii.csv")
        curves[name] = t
    _write_table(ensemble_table(red, frames), out / "ensemble.ecsv", "ascii.ecsv")
    plots.lightcurve_plot(red, curves, out / "lightcurve.png")
    record = run_record(settings, frames, plan, results, red, notes)
    atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
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
    }
