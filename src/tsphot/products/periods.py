"""Period products: read runs' light curves; write periodogram, phased curve and period.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from astropy.table import QTable, Table

from tsphot.period import PeriodError, PeriodResult, Series, phase_fold
from tsphot.products.export import _jsonable, atomic_write


def safe_name(name: str) -> str:
    """The object name as used in file names (as export.write_products spells it)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def read_lightcurve(run_dir: str | Path, name: str) -> tuple[Table, dict[str, Any]]:
    """A run's light curve of one object (lightcurve_<NAME>.ecsv) and its run.json (or {})."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PeriodError(f"{run}: not a folder; give the output folder of a tsphot run")
    path = run / f"lightcurve_{safe_name(name)}.ecsv"
    if not path.is_file():
        have = sorted(
            p.name[len("lightcurve_") : -len(".ecsv")] for p in run.glob("lightcurve_*.ecsv")
        )
        raise PeriodError(
            f"{path}: no light curve of {name!r} in this run; objects here: "
            + (", ".join(have) if have else "none (is this a tsphot output folder?)")
        )
    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # any unreadable file gets the same clear message
        raise PeriodError(f"{path}: cannot be read as ECSV ({exc})") from None
    for col in ("JD_UTC", "diff_mag", "diff_mag_err"):
        if col not in t.colnames:
            raise PeriodError(f"{path}: column {col} is missing; re-run tsphot on this night")
    record: dict[str, Any] = {}
    rj = run / "run.json"
    if rj.is_file():
        try:
            record = json.loads(rj.read_text())
        except (OSError, ValueError):
            record = {}
    return t, record


def usable(t: Table) -> np.ndarray:
    """Rows to use: valid (status ok) with finite magnitude and positive error."""
    ok = np.ones(len(t), bool)
    if "valid" in t.colnames:
        ok &= np.asarray(t["valid"], bool)
    elif "status" in t.colnames:
        ok &= np.asarray(t["status"]) == "ok"
    m = np.asarray(t["diff_mag"], float)
    e = np.asarray(t["diff_mag_err"], float)
    return ok & np.isfinite(m) & np.isfinite(e) & (e > 0)


_ALIASES = {
    "jd": ("jd", "jd_utc", "time", "date_jd", "jdut"),
    "r": ("r", "r_au", "rh", "r_helio"),
    "delta": ("delta", "delta_au", "dist", "Δ"),
    "phase": ("phase", "alpha", "phase_angle", "phase_deg", "sto"),
}


def read_ephemeris(path: str | Path) -> dict[str, np.ndarray]:
    """An ephemeris table (ECSV/CSV/whitespace) with JD, r (au), delta (au), phase (deg)."""
    p = Path(path)
    if not p.is_file():
        raise PeriodError(f"ephemeris {p}: no such file")
    t = None
    for fmt in ("ascii.ecsv", "ascii.csv", "ascii.basic", "ascii"):
        try:
            t = Table.read(p, format=fmt)
            break
        except Exception:  # try the next format
            continue
    if t is None:
        raise PeriodError(f"ephemeris {p}: cannot be read as a table (ECSV, CSV or columns)")
    lower = {c.lower(): c for c in t.colnames}
    out: dict[str, np.ndarray] = {}
    for key, names in _ALIASES.items():
        col = next((lower[n] for n in names if n in lower), None)
        if col is None:
            if key == "phase":
                continue
            raise PeriodError(
                f"ephemeris {p}: no {key} column (looked for {', '.join(names)}); "
                f"columns are {', '.join(t.colnames)}"
            )
        out[key] = np.asarray(t[col], float)
    order = np.argsort(out["jd"])
    return {k: v[order] for k, v in out.items()}


def interpolate_ephemeris(eph: dict[str, np.ndarray], jd: np.ndarray, source: str) -> tuple:
    """r, Δ and phase (or None) at each JD, linearly interpolated; JDs must be inside the table."""
    jd = np.asarray(jd, float)
    lo, hi = eph["jd"][0], eph["jd"][-1]
    if jd.min() < lo - 1e-6 or jd.max() > hi + 1e-6:
        raise PeriodError(
            f"ephemeris {source} covers JD {lo:.4f}..{hi:.4f} but the light curve runs "
            f"{jd.min():.4f}..{jd.max():.4f}; extend the table"
        )
    r = np.interp(jd, eph["jd"], eph["r"])
    d = np.interp(jd, eph["jd"], eph["delta"])
    ph = np.interp(jd, eph["jd"], eph["phase"]) if "phase" in eph else None
    return r, d, ph


def periodogram_table(res: PeriodResult) -> QTable:
    """One row per trial frequency: frequency (1/d), period (d, h) and the statistic."""
    t = QTable()
    t["frequency"] = res.frequency
    t["period_d"] = 1 / res.frequency
    t["period_h"] = 24 / res.frequency
    t[res.statistic_name] = res.statistic
    t.meta["method"] = res.method
    t.meta["statistic"] = {
        "chi2": "chi-square of the Fourier series + per-night zero points (lower is better)",
        "ls_power": "Lomb-Scargle power (standard normalisation; higher is better)",
        "bls_log_likelihood": "BLS log-likelihood gain over a constant (higher is better)",
    }.get(res.statistic_name, res.statistic_name)
    return t


def phased_table(res: PeriodResult, s: Series) -> QTable:
    """Every point with its phase, magnitude minus its night's zero point, error and model."""
    zp = np.asarray(res.params["zero_points"])
    t = QTable()
    t["night"] = [s.night_names[k] for k in s.night]
    t["time"] = s.t
    t["phase"] = phase_fold(s.t, res.period, res.epoch)
    t["mag"] = s.mag - zp[s.night]
    t["mag_err"] = s.err
    t["model"] = res.model(s.t)
    t["residual"] = t["mag"] - t["model"]
    t.meta["period_d"] = res.period
    t.meta["epoch"] = res.epoch
    return t


def period_plots(res: PeriodResult, s: Series, out: Path, title: str) -> None:
    """periodogram.png (statistic against period) and phased.png (folded curve and model)."""
    in_hours = res.period < 2.0
    unit, fac = ("h", 24.0) if in_hours else ("d", 1.0)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ax.plot(fac / res.frequency, res.statistic, "-", lw=0.8, color="C0")
    ax.axvline(res.period * fac, color="C3", lw=1, label=f"best {res.period * fac:.5g} {unit}")
    for a in res.aliases:
        if a.delta_chi2 < 9:
            ax.axvline(a.period * fac, color="C1", lw=0.8, ls="--")
    ax.set_xlabel(f"period ({unit})")
    ax.set_ylabel(res.statistic_name)
    if res.statistic_name == "chi2":
        ax.invert_yaxis()
    ax.set_title(f"{title}: {res.method} periodogram (dashed: aliases not excluded)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "periodogram.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

    ph = phased_table(res, s)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for k, name in enumerate(s.night_names):
        sel = s.night == k
        ax.errorbar(
            np.asarray(ph["phase"])[sel],
            np.asarray(ph["mag"])[sel],
            yerr=s.err[sel],
            fmt=".",
            ms=4,
            lw=0.5,
            alpha=0.8,
            label=name,
        )
    grid = np.linspace(0, 1, 500)
    ax.plot(grid, res.model(res.epoch + grid * res.period), "-", color="k", lw=1.5, label="model")
    ax.invert_yaxis()
    err_txt = f"{res.period_err * fac:.2g}"
    head = f"{title}: P = {res.period * fac:.6g} ± {err_txt} {unit} ({res.method})"
    if res.aliases_unresolved:  # the fold shown is one of several the data allow: say so
        n_alias = sum(a.delta_chi2 < 9 for a in res.aliases)
        head += f"\naliases unresolved: {n_alias} other periods not excluded (see period.json)"
    ax.set_title(head, fontsize=10 if res.aliases_unresolved else None)
    ax.set_xlabel(f"phase (epoch {res.epoch:.5f})")
    ax.set_ylabel("magnitude − night zero point")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(out / "phased.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def period_record(res: PeriodResult, s: Series, context: dict[str, Any]) -> dict[str, Any]:
    """The period.json record: best period and error, method, fit quality, aliases, notes."""
    rec = {
        "schema": "tsphot.period/1",
        **context,
        "method": res.method,
        "period_d": res.period,
        "period_h": res.period * 24,
        "period_err_d": res.period_err,
        "period_err_h": res.period_err * 24,
        "uncertainty_method": res.uncertainty_method,
        "epoch": res.epoch,
        "false_alarm_probability": res.fap,
        "amplitude_mag": res.amplitude(),
        "order": res.order,
        "chi2": res.chi2,
        "dof": res.dof,
        "chi2_red": res.chi2_red,
        "chi2_constant": res.chi2_constant,
        "n_points": res.n_points,
        "points_per_night": {
            name: int((s.night == k).sum()) for k, name in enumerate(s.night_names)
        },
        "aliases_unresolved": res.aliases_unresolved,
        "aliases": [a.as_dict() for a in res.aliases],
        "params": res.params,
        "notes": res.notes,
    }
    return _jsonable(rec)


def write_period_products(
    res: PeriodResult, s: Series, out: Path, context: dict[str, Any], title: str
) -> dict[str, Any]:
    """Write periodogram.{ecsv,png}, phased.{ecsv,png} and period.json into out."""
    out.mkdir(parents=True, exist_ok=True)
    pg = periodogram_table(res)
    atomic_write(
        out / "periodogram.ecsv", lambda p: pg.write(p, format="ascii.ecsv", overwrite=True)
    )
    ph = phased_table(res, s)
    atomic_write(out / "phased.ecsv", lambda p: ph.write(p, format="ascii.ecsv", overwrite=True))
    period_plots(res, s, out, title)
    rec = period_record(res, s, context)
    atomic_write(out / "period.json", lambda p: Path(p).write_text(json.dumps(rec, indent=2)))
    return rec
