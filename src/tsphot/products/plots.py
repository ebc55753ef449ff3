"""Plots: the light-curve figure a person would put in a report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def binned(t: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of y in bins of the given width along t, with the standard error of each bin."""
    ok = np.isfinite(t) & np.isfinite(y)
    t, y = t[ok], y[ok]
    if len(t) == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    edges = np.arange(t.min(), t.max() + width, width)
    idx = np.digitize(t, edges)
    tb, yb, eb = [], [], []
    for k in np.unique(idx):
        sel = idx == k
        if sel.sum() >= 2:
            tb.append(t[sel].mean())
            yb.append(y[sel].mean())
            eb.append(y[sel].std(ddof=1) / np.sqrt(sel.sum()))
    return np.array(tb), np.array(yb), np.array(eb)


def lightcurve_plot(red: Any, curves: dict[str, Any], path: Path) -> None:
    """Targets' relative flux with binned points and model; check stars offset below."""
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    offset = 0.0
    t0 = None
    for name, t in sorted(curves.items(), key=lambda kv: kv[1].meta["role"] != "target"):
        c = red.curves[name]
        time = np.asarray(t["BJD_TDB"].value)
        label_t = "BJD_TDB"
        if not np.isfinite(time).any():
            time, label_t = np.asarray(t["JD_UTC"].value), "JD_UTC"
        if t0 is None:
            t0 = np.floor(np.nanmin(time))
        x = time - t0
        v = c.valid
        ax.errorbar(
            x[v],
            c.rel_flux[v] - offset,
            yerr=c.rel_flux_err[v],
            fmt=".",
            ms=3,
            alpha=0.35,
            color="C0" if c.role == "target" else "C2",
            lw=0.5,
        )
        span = np.nanmax(x[v]) - np.nanmin(x[v]) if v.any() else 0
        tb, yb, eb = binned(x[v], c.rel_flux[v], max(span / 25, 1e-3))
        ax.errorbar(
            tb,
            yb - offset,
            yerr=eb,
            fmt="o",
            ms=5,
            color="k" if c.role == "target" else "C3",
            label=f"{name} ({c.role}) rms {1e2 * c.rms:.2f} %",
        )
        if "model" in t.colnames:
            m = np.asarray(t["model"])
            ok = np.isfinite(m)
            ax.plot(x[ok], m[ok] - offset, "-", color="C1", lw=1.5, label=f"{name} model")
        bad = ~v
        if bad.any():
            yb_ = np.full(bad.sum(), np.nanmin(c.rel_flux[v]) - offset if v.any() else 1 - offset)
            ax.plot(x[bad], yb_ - 0.005, "x", color="r", ms=4)
        offset += max(0.04, 6 * c.rms if np.isfinite(c.rms) else 0.04)
    ax.set_xlabel(f"{label_t} − {t0:.0f} (d)" if t0 is not None else "time")
    ax.set_ylabel("relative flux (offset for check stars)")
    ax.set_title(
        f"tsphot differential light curve (aperture {red.radius:.1f} px, "
        f"{int(red.ensemble.used.sum())} comparison stars)"
    )
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
