"""Pictures a person would put in a report, each as PNG and PDF.

- ``lightcurve``: the target(s) with binned points and the model; check stars and the most
  heavily weighted comparison stars (their leave-one-out curves) offset below.
- ``conditions``: airmass, sky, FWHM, x/y drift and transparency against time, with the frames
  left out of the light curve marked.
- ``finder``: the reference frame with every aperture and annulus, labelled; comparison stars
  with their weights, rejected ones crossed out; north and east arrows when a WCS exists.
- ``noise``: predicted against achieved scatter for every star, against magnitude.

PDFs carry no creation date, so the same run gives the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects

from tsphot import executors

OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="black")]
PDF_META = {"CreationDate": None, "Producer": None, "Creator": "tsphot"}
PNG_META = {"Software": None}


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


def _save(fig: Any, stem: Path) -> list[Path]:
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    from tsphot.products.export import atomic_write

    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", metadata=PNG_META))
    # (dpi: the resolution of the rasterized per-frame points inside the vector PDF)
    atomic_write(pdf, lambda tmp: fig.savefig(tmp, format="pdf", metadata=PDF_META, dpi=200))
    plt.close(fig)
    return [png, pdf]


def _time_axis(red: Any, curves: dict[str, Any]) -> tuple[np.ndarray, str, float]:
    """Times of the frames (BJD_TDB of the first target, else JD_UTC) less the night's day."""
    t = None
    label = "JD_UTC"
    for tab in curves.values():
        if tab.meta.get("role") == "target":
            b = np.asarray(tab["BJD_TDB"].value)
            if np.isfinite(b).any():
                t, label = b, "BJD_TDB"
            break
    if t is None:
        t = np.asarray(red.jd_utc, float)
    t0 = float(np.floor(np.nanmin(t))) if np.isfinite(t).any() else 0.0
    return t - t0, label, t0


# ----------------------------------------------------------------------------- light curve


def lightcurve_plot(red: Any, curves: dict[str, Any], path: Path, n_comps: int = 3) -> list[Path]:
    """Targets' relative flux with binned points and model; checks and comparisons below."""
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    x, label_t, t0 = _time_axis(red, curves)
    offset = 0.0
    entries: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, Any]] = []
    for name, t in sorted(curves.items(), key=lambda kv: kv[1].meta["role"] != "target"):
        c = red.curves[name]
        entries.append((name, c.role, c.rel_flux, c.rel_flux_err, c.valid, t))
    ens = red.ensemble
    order = np.argsort(-np.where(ens.used, ens.weights, -np.inf))
    for j in order[: min(n_comps, int(ens.used.sum()))]:
        loo = np.asarray(ens.loo_mag[:, j], float)
        ok = np.isfinite(loo)
        if ok.sum() < 3:
            continue
        rel = 10 ** (-0.4 * (loo - np.nanmedian(loo[ok])))
        err = rel * np.asarray(ens.loo_err[:, j], float) / 1.0857362
        share = 100 * ens.weights[j] / np.sum(ens.weights[ens.used])
        entries.append((ens.names[j], f"comp, {share:.1f}% of the weight", rel, err, ok, None))
    colors = {"target": ("C0", "k"), "check": ("C2", "C3")}
    for name, role, rel, err, v, t in entries:
        point_c, bin_c = colors.get(role, ("0.6", "C4"))
        # one point per frame: rasterized in the PDF (thousands of vector markers would make
        # it slow to write and to open), binned points and models stay vector
        ax.errorbar(x[v], rel[v] - offset, yerr=err[v], fmt=".", ms=3, alpha=0.35,
                    color=point_c, lw=0.5, rasterized=True)  # fmt: skip
        span = np.nanmax(x[v]) - np.nanmin(x[v]) if v.any() else 0
        tb, yb, eb = binned(x[v], rel[v], max(span / 25, 1e-3))
        rms = float(np.std(rel[v])) if v.sum() > 2 else float("nan")
        fit = red.curves[name].fit if name in red.curves else None
        what = f"rms {1e2 * rms:.2f} %"
        if fit is not None:
            what = f"rms {1e2 * fit.residual_rms:.2f} % about the model"
        ax.errorbar(tb, yb - offset, yerr=eb, fmt="o", ms=5, color=bin_c,
                    label=f"{name} ({role}) {what}")  # fmt: skip
        if t is not None and "model" in t.colnames:
            m = np.asarray(t["model"], float)
            ok = np.isfinite(m)
            ax.plot(x[ok], m[ok] - offset, "-", color="C1", lw=1.5, label=f"{name} model")
        bad = ~v
        if bad.any() and v.any():
            yb_ = np.full(bad.sum(), np.nanmin(rel[v]) - offset - 0.005)
            ax.plot(x[bad], yb_, "x", color="r", ms=4)
        offset += max(0.04, 6 * rms if np.isfinite(rms) else 0.04)
    ax.set_xlabel(f"{label_t} − {t0:.0f} (d)")
    ax.set_ylabel("relative flux (offset below the target)")
    ax.set_title(
        f"tsphot differential light curve (aperture {red.radius:.1f} px, "
        f"{int(red.ensemble.used.sum())} comparison stars); × = left out"
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save(fig, Path(path).with_suffix(""))


# ----------------------------------------------------------------------------- conditions


def conditions_plot(
    red: Any, results: list, curves: dict[str, Any], plan: Any, path: Path
) -> list[Path]:
    """Airmass, sky, FWHM, x/y drift and transparency against time; rejected frames marked."""
    x, label_t, t0 = _time_axis(red, curves)
    fwhm = np.array([r.fwhm for r in results], float)
    sky = np.array([r.sky_level for r in results], float)
    dx = np.full(len(results), np.nan)
    dy = np.full(len(results), np.nan)
    names = [o.name for o in plan.objects]
    ti = next(i for i, o in enumerate(plan.objects) if o.role == "target")
    for k, r in enumerate(results):
        if r.status == "ok" and len(r.columns.get("x", [])) == len(names):
            dx[k] = r.columns["x"][ti] - plan.objects[ti].x
            dy[k] = r.columns["y"][ti] - plan.objects[ti].y
    frame_bad = ~np.asarray(red.frame_ok, bool)
    cloudy = np.asarray(red.cloudy, bool)
    target = next(c for c in red.curves.values() if c.role == "target")
    outlier = target.outlier if target.outlier is not None else np.zeros(len(x), bool)
    panels = [
        ("airmass", np.asarray(red.airmass, float)),
        ("sky (ADU)", sky),
        ("FWHM (px)", fwhm),
        ("drift (px)", None),
        ("transparency", np.asarray(red.transparency, float)),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 9), dpi=110, sharex=True)
    for ax, (label, y) in zip(axes, panels, strict=True):
        if y is None:
            ax.plot(x, dx, ".-", ms=2, lw=0.5, label="x", rasterized=True)
            ax.plot(x, dy, ".-", ms=2, lw=0.5, label="y", rasterized=True)
            ax.legend(fontsize=7, loc="best")
            y = np.concatenate([dx, dy])
            xs = np.concatenate([x, x])
        else:
            ax.plot(x, y, ".-", ms=2, lw=0.5, color="C0", rasterized=True)
            xs = x
        ax.set_ylabel(label)
        finite = np.isfinite(y)
        lo = np.nanmin(y) if finite.any() else 0.0
        for mask, style, what in (
            (frame_bad, ("r", "x"), "not measured"),
            (cloudy, ("m", "v"), "thick cloud"),
            (outlier, ("orange", "d"), "outlier"),
        ):
            if mask.any():
                ax.plot(x[mask], np.full(mask.sum(), lo), style[1], color=style[0], ms=5,
                        label=what if label == "airmass" else None)  # fmt: skip
        if label == "transparency":
            ax.axhline(1.0, color="0.7", lw=0.5)
        del xs
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel(f"{label_t} − {t0:.0f} (d)")
    axes[0].set_title("observing conditions (marks: frames left out of the light curve)")
    fig.tight_layout()
    return _save(fig, Path(path).with_suffix(""))


# ----------------------------------------------------------------------------- finder chart


def _reference_image(plan: Any) -> np.ndarray | None:
    from tsphot import calibrate, ingest, pipeline

    try:
        info = ingest.read_header(plan.ref_path)
        raw, _ = ingest.read_pixels(plan.ref_path, info.pedestal)
        return calibrate.apply(raw, info.exptime, pipeline._masters(plan.masters_file))
    except Exception:
        return None


def _compass(ax: Any, header: Any, shape: tuple[int, int]) -> None:
    """North and east arrows from the reference frame's WCS."""
    from tsphot import ingest

    wcs = ingest.quiet_wcs(header) if header is not None else None
    if wcs is None:
        return
    ny, nx = shape
    x0, y0 = 0.15 * nx, 0.15 * ny
    length = 0.08 * min(nx, ny)
    from astropy import units as u

    try:
        c = wcs.pixel_to_world(x0, y0)
        north = c.directional_offset_by(0.0 * u.deg, 30.0 * u.arcsec)
        east = c.directional_offset_by(90.0 * u.deg, 30.0 * u.arcsec)
    except Exception:
        return
    for other, label in ((north, "N"), (east, "E")):
        px, py = wcs.world_to_pixel(other)
        d = np.array([float(px) - x0, float(py) - y0])
        norm = np.hypot(*d)
        if not norm > 0:
            continue
        d = d / norm * length
        ax.annotate("", xy=(x0 + d[0], y0 + d[1]), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "color": "yellow", "lw": 1.5})  # fmt: skip
        ax.text(x0 + 1.25 * d[0], y0 + 1.25 * d[1], label, color="yellow", fontsize=10,
                ha="center", va="center", fontweight="bold", path_effects=OUTLINE)  # fmt: skip


def finder_chart(plan: Any, red: Any, notes: dict, path: Path) -> list[Path]:
    """The reference frame with each aperture and annulus drawn and labelled."""
    from matplotlib.patches import Circle, Ellipse

    img = _reference_image(plan)
    ny, nx = plan.shape
    fig, ax = plt.subplots(figsize=(8, 8 * ny / nx + 0.4), dpi=110)
    if img is not None:
        # shown binned to at most ~700 px a side: what the page can show, a fraction of the
        # drawing time and file size
        k = max(1, int(np.ceil(max(ny, nx) / 700)))
        if k > 1:
            img = (
                img[: ny // k * k, : nx // k * k].reshape(ny // k, k, nx // k, k).mean(axis=(1, 3))
            )
        finite = np.isfinite(img)
        lo, hi = np.percentile(img[finite], [5, 99.7]) if finite.any() else (0, 1)
        ax.imshow(np.clip(img, lo, hi), origin="lower", cmap="gray", vmin=lo, vmax=hi,
                  interpolation="nearest", extent=(-0.5, (nx // k) * k - 0.5, -0.5,
                                                   (ny // k) * k - 0.5))  # fmt: skip
    else:
        ax.set_facecolor("black")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    aps = plan.apertures
    r_ap = red.radius
    b_over_a = 1.0 - aps.ellipticity
    ens = red.ensemble
    comp_pos = {n: j for j, n in enumerate(ens.names)}
    wsum = float(np.sum(ens.weights[ens.used])) if ens.used.any() else 1.0
    for o in plan.objects:
        if o.role == "target":
            color = "lime"
        elif o.role == "check":
            color = "cyan"
        else:
            j = comp_pos.get(o.name)
            color = "orange" if j is not None and ens.used[j] else "red"
        ax.add_patch(Ellipse((o.x, o.y), 2 * r_ap, 2 * r_ap * b_over_a, angle=aps.theta_deg,
                             fill=False, color=color, lw=1.0))  # fmt: skip
        for r in aps.annulus:
            ax.add_patch(Circle((o.x, o.y), r, fill=False, color=color, lw=0.5, ls="--"))
        label = o.name
        if o.role == "comp":
            j = comp_pos.get(o.name)
            if j is not None and ens.used[j]:
                label += f" {100 * ens.weights[j] / wsum:.1f}%"
            elif j is not None:
                d = aps.annulus[1] * 0.7
                ax.plot([o.x - d, o.x + d], [o.y - d, o.y + d], color="red", lw=1.2)
                ax.plot([o.x - d, o.x + d], [o.y + d, o.y - d], color="red", lw=1.2)
        elif o.role in ("target", "check"):
            label += f" ({o.role})"
        ax.text(o.x + aps.annulus[1] + 2, o.y, label, color=color, fontsize=7, va="center",
                path_effects=OUTLINE)  # fmt: skip
    _compass(ax, notes.get("reference_header"), plan.shape)
    ax.set_xlabel("x (px, 0-based column)")
    ax.set_ylabel("y (px, 0-based row)")
    n_used = int(ens.used.sum())
    ax.set_title(
        f"finder: {Path(plan.ref_path).name}; aperture {r_ap:.1f} px, annulus "
        f"{aps.annulus[0]:.1f}–{aps.annulus[1]:.1f} px\n{n_used} comparison stars kept "
        "(% = share of the ensemble weight), rejected ones crossed out",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, Path(path).with_suffix(""))


# ----------------------------------------------------------------------------- noise budget


def noise_budget_plot(red: Any, plan: Any, path: Path) -> list[Path]:
    """Achieved against predicted scatter (mmag) of every star, against its magnitude, with the
    noise model's terms (photon, background, background excess, scintillation, ensemble)
    drawn per star."""
    budget = getattr(red, "budget", {}) or {}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    k = 1085.7362  # mmag per unit of fractional flux
    rows = sorted(budget.items(), key=lambda kv: kv[1]["mag"])
    comps = [(n, b) for n, b in rows if b["role"] == "comp"]
    if comps:
        mags = np.array([b["mag"] for _, b in comps])
        styles = {"photon": ":", "background": "--", "background_excess": "-",
                  "scintillation": "-.", "ensemble": (0, (1, 3))}  # fmt: skip
        for term, ls in styles.items():
            if term not in comps[0][1]["terms"] or not any(b["terms"][term] for _, b in comps):
                continue  # no background excess measured (or none significant)
            excess = term == "background_excess"
            ax.plot(mags, [k * b["terms"][term] for _, b in comps], ls=ls,
                    color="C1" if excess else "0.45", lw=1,
                    label="model: background excess (empty-sky apertures)" if excess
                    else f"model: {term}")  # fmt: skip
        ax.plot(mags, [k * b["predicted"] for _, b in comps], color="0.2", lw=1.2,
                label="model: total")  # fmt: skip
        used = np.array([bool(b["used_in_ensemble"]) for _, b in comps])
        ach = np.array([k * b["achieved"] for _, b in comps])
        ax.scatter(mags[used], ach[used], s=18, color="C0", label="comparison (used)")
        if (~used).any():
            ax.scatter(mags[~used], ach[~used], s=24, marker="x", color="r",
                       label="comparison (rejected)")  # fmt: skip
    for name, b in rows:
        if b["role"] == "comp":
            continue
        color = "k" if b["role"] == "target" else "C2"
        ax.scatter([b["mag"]], [k * b["achieved"]], s=90, marker="*", color=color,
                   label=f"{name}: achieved ({b['achieved_from']})")  # fmt: skip
        ax.scatter([b["mag"]], [k * b["predicted"]], s=90, marker="_", color=color, lw=2,
                   label=f"{name}: predicted ({b['ratio']:.2f}×)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("median instrumental magnitude (−2.5 log10(e-/s) + 25)")
    ax.set_ylabel("scatter per point (mmag)")
    ax.set_title("noise budget: achieved scatter against the noise model, star by star")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path).with_suffix(""))


# ----------------------------------------------------------------------------- all of them


def write_all(
    settings: Any,
    frames: list,
    plan: Any,
    results: list,
    red: Any,
    notes: dict,
    curves: dict[str, Any],
    out: Path,
) -> list[Path]:
    """Write every picture of a run into out/ (PNG and PDF); return the files."""
    out = Path(out)
    jobs: list[tuple[Callable[..., list[Path]], tuple]] = [
        (lightcurve_plot, (red, curves, out / "lightcurve.png")),
        (conditions_plot, (red, results, curves, plan, out / "conditions.png")),
        (finder_chart, (plan, red, notes, out / "finder.png")),
        (noise_budget_plot, (red, plan, out / "noise_budget.png")),
    ]
    workers = 1
    if getattr(settings, "executor", "serial") == "processes":
        workers = min(len(jobs), settings.workers or executors.default_workers())
    return [f for files in _render(jobs, workers) for f in files]


_JOBS: list[tuple[Callable[..., list[Path]], tuple]] = []  # set in the parent before forking


def _render_forked(i: int) -> list[Path]:
    fn, args = _JOBS[i]
    return fn(*args)


def _render(jobs: list[tuple[Callable[..., list[Path]], tuple]], workers: int) -> list[list[Path]]:
    """Each figure drawn and saved, in forked processes when there are cores to spare.

    Drawing is pure-Python matplotlib work (about half of a small run's time, serially), and
    the figures are independent: forked children see the run's objects without pickling them
    and write the same files. Forking a process with other threads can deadlock, so then (and
    where fork does not exist) they are drawn one after the other, as with one worker.
    """
    global _JOBS
    _JOBS = jobs
    try:
        return executors.forked_map(_render_forked, range(len(jobs)), workers)
    finally:
        _JOBS = []
