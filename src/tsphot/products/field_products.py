"""Field-mode products: field.ecsv, field_lightcurves.parquet and the RMS–magnitude plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from astropy import units as u
from astropy.table import QTable, Table

from tsphot.field import FieldResult
from tsphot.products.export import atomic_write


def field_table(fr: FieldResult) -> QTable:
    """One row per star: position, magnitude, variability indices, candidate flag and flags."""
    ind = fr.indices
    t = QTable()
    t["name"] = fr.names
    t["role"] = fr.roles
    t["x"] = fr.x * u.pix
    t["y"] = fr.y * u.pix
    if fr.ra is not None:
        t["ra"] = fr.ra * u.deg
        t["dec"] = fr.dec * u.deg
    t["mag"] = fr.mag * u.mag
    t["n_points"] = ind["n_points"]
    t["rms"] = ind["rms"] * u.mag
    t["p2p_rms"] = ind["p2p_rms"] * u.mag
    t["expected_rms"] = ind["expected"] * u.mag
    t["chi2_red"] = ind["chi2_red"]
    t["noise_scale"] = ind["noise_scale"]
    t["p_chi2"] = ind["p_chi2"]
    t["von_neumann"] = ind["von_neumann"]
    t["von_neumann_z"] = ind["von_neumann_z"]
    t["von_neumann_z_centre"] = ind["von_neumann_z_centre"]
    t["von_neumann_z_spread"] = ind["von_neumann_z_spread"]
    t["p_von_neumann"] = ind["p_von_neumann"]
    t["stetson_j"] = ind["stetson_j"]
    t["candidate"] = fr.candidate
    t["flags"] = fr.flags if fr.flags else [""] * len(fr.names)
    t.meta["description"] = "tsphot field mode: one row per star measured on every frame"
    t.meta["mag"] = "median instrumental magnitude, -2.5 log10(e-/s) + 25"
    t.meta["rms"] = "scatter of the differential magnitude about its weighted mean"
    t.meta["p2p_rms"] = "white-noise scatter from point-to-point differences (robust, MAD)"
    t.meta["expected_rms"] = "rms the error bars predict (CCD equation, scintillation, ensemble)"
    t.meta["candidate"] = (
        f"p_chi2 or p_von_neumann below half the false-alarm rate {fr.false_alarm:g}; "
        "chi2 after dividing by noise_scale (running median of chi2_red at that magnitude, "
        ">= 1); von Neumann z after subtracting von_neumann_z_centre and dividing by "
        "von_neumann_z_spread (running median and MAD of the field's z at that magnitude)"
    )
    t.meta["notes"] = fr.notes
    return t


def lightcurves_long(fr: FieldResult, red: Any) -> Table:
    """Long format: one row per star and frame (star, frame, time, flux, error, status)."""
    n_f, n_s = fr.diff_mag.shape
    bjd = np.full(n_f, np.nan)
    for c in red.curves.values():
        if c.role == "target" and np.isfinite(c.bjd_tdb).any():
            bjd = c.bjd_tdb
            break
    dm = fr.diff_mag
    with np.errstate(invalid="ignore"):
        ref = np.nanmedian(np.where(fr.valid, dm, np.nan), axis=0)
        rel = 10 ** (-0.4 * (dm - ref[None, :]))
    t = Table()
    t["star"] = np.repeat(np.asarray(fr.names, dtype=str)[None, :], n_f, axis=0).ravel()
    t["frame"] = np.repeat(np.arange(n_f, dtype=np.int32), n_s)
    t["BJD_TDB"] = np.repeat(bjd, n_s)
    t["JD_UTC"] = np.repeat(np.asarray(red.jd_utc, float), n_s)
    t["rel_flux"] = rel.ravel()
    t["rel_flux_err"] = (rel * fr.diff_mag_err / 1.0857362).ravel()
    t["diff_mag"] = dm.ravel()
    t["diff_mag_err"] = fr.diff_mag_err.ravel()
    status = np.where(fr.valid, "ok", fr.status.astype(str))
    status = np.where((status == "ok") & ~fr.valid, "excluded", status)
    t["status"] = status.ravel()
    t.meta["BJD_TDB"] = "the first target's barycentric time (the same to < 0.1 s across a field)"
    return t


def rms_mag_plot(fr: FieldResult, path: Path) -> None:
    """RMS against magnitude: every star, the noise model's prediction, candidates marked."""
    ind = fr.indices
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    roles = np.asarray(fr.roles)
    mag, rms = fr.mag, ind["rms"]
    ok = np.isfinite(mag) & np.isfinite(rms)
    sel = ok & (roles == "field")
    ax.semilogy(mag[sel], rms[sel], ".", color="0.45", ms=4, label="field stars")
    sel = ok & (roles == "comp")
    ax.semilogy(mag[sel], rms[sel], "s", color="C0", ms=4, mfc="none", label="comparison stars")
    sel = ok & np.isin(roles, ["target", "check"])
    ax.semilogy(mag[sel], rms[sel], "D", color="C2", ms=5, label="target / check")
    c = ok & fr.candidate
    ax.semilogy(mag[c], rms[c], "o", ms=9, mfc="none", mec="C3", mew=1.5, label="candidates")
    for j in np.flatnonzero(c):
        ax.annotate(fr.names[j], (mag[j], rms[j]), fontsize=7, xytext=(4, 3), color="C3",
                    textcoords="offset points")  # fmt: skip
    if fr.model_mag.size:
        with_excess = fr.model_rms_no_excess is not None
        ax.semilogy(
            fr.model_mag,
            fr.model_rms,
            "-",
            color="k",
            lw=1.2,
            label="noise model" + (" (with the background excess)" if with_excess else ""),
        )
        if with_excess:
            ax.semilogy(fr.model_mag, fr.model_rms_no_excess, "--", color="0.3", lw=1,
                        label="without it (the CCD equation's white background)")  # fmt: skip
    ax.set_xlabel("instrumental magnitude (-2.5 log10 e-/s + 25)")
    ax.set_ylabel("rms of differential magnitude (mag)")
    ax.set_title(
        f"{int(ok.sum())} stars, {int(c.sum())} candidate variables "
        f"(false-alarm rate {fr.false_alarm:g} per star)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_field_products(fr: FieldResult, red: Any, out: Path) -> dict[str, Any]:
    """Write field.ecsv, field_lightcurves.parquet (ECSV if pyarrow is missing), rms_mag.png."""
    out = Path(out)
    t = field_table(fr)
    atomic_write(out / "field.ecsv", lambda p: t.write(p, format="ascii.ecsv", overwrite=True))
    lc = lightcurves_long(fr, red)
    try:
        import pyarrow  # noqa: F401 - only to know whether Parquet can be written

        lc_path = out / "field_lightcurves.parquet"
        atomic_write(lc_path, lambda p: lc.write(p, format="parquet", overwrite=True))
    except ImportError:
        lc_path = out / "field_lightcurves.ecsv"
        atomic_write(lc_path, lambda p: lc.write(p, format="ascii.ecsv", overwrite=True))
    rms_mag_plot(fr, out / "rms_mag.png")
    cand = np.flatnonzero(fr.candidate)
    return {
        "stars": len(fr.names),
        "candidates": [
            {
                "name": fr.names[j],
                "x": float(fr.x[j]),
                "y": float(fr.y[j]),
                **({"ra": float(fr.ra[j]), "dec": float(fr.dec[j])} if fr.ra is not None else {}),
                "rms_mag": float(fr.indices["rms"][j]),
                "expected_mag": float(fr.indices["expected"][j]),
            }
            for j in cand
        ],
        "table": str(out / "field.ecsv"),
        "lightcurves": str(lc_path),
    }
