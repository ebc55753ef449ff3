"""The demo: simulate a night with known truth, reduce it, compare the results with the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from tsphot import pipeline, synthetic
from tsphot.settings import Settings, TransitSpec, make_settings


def transit_guess(truth: synthetic.Truth, t0_offset_min: float = 8.0) -> TransitSpec:
    """Transit settings an observer would give: the known period, inclination and limb darkening,
    a predicted mid-time a few minutes off, and rough Rp/Rs and a/Rs to be fitted."""
    tr = truth.meta["transit"]
    return TransitSpec(
        t0=tr["t0_bjd_tdb"] + t0_offset_min / 1440.0,
        period=tr["period_d"],
        rp=0.8 * tr["rp_rs"],
        a=tr["a_rs"],
        inc=tr["inc_deg"],
        u=list(tr["ld"]),
        limb_dark=tr["ld_law"],
    )


def settings_for(night: Path, out: Path, truth: synthetic.Truth, **flags: Any) -> Settings:
    """Settings to reduce a simulated night: its own tsphot.toml plus the transit to fit."""
    return make_settings(night / "tsphot.toml", out=str(out), transit=transit_guess(truth), **flags)


def _match_truth(truth: synthetic.Truth, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the true star nearest each position on the first frame (-1 if none within 2 px)."""
    tx = np.asarray(truth.stars["x"], float)
    ty = np.asarray(truth.stars["y"], float)
    d = np.hypot(tx[None, :] - x[:, None], ty[None, :] - y[:, None])
    idx = np.argmin(d, axis=1)
    return np.where(d[np.arange(len(x)), idx] < 2.0, idx, -1)


def compare_with_truth(truth: synthetic.Truth, run_dir: str | Path) -> dict[str, Any]:
    """Set a reduction of a simulated night against its truth: depth, noise, errors, ensemble."""
    run_dir = Path(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    res = Table.read(run_dir / "results.ecsv")
    lc = Table.read(run_dir / "lightcurve_T1.ecsv")
    first = res[res["frame"] == 0]
    names = list(first["object"])
    matched = _match_truth(truth, np.array(first["x"]), np.array(first["y"]))
    star_of = dict(zip(names, matched, strict=True))
    radius = float(record["apertures"]["chosen_radius_px"])
    r_in, r_out = record["apertures"]["annulus_px"]
    # The pipeline takes the sky as a median, whose variance is π/2 that of a mean: the truth's
    # (1 + n_pix/n_sky) factor is evaluated with the equivalent number of sky pixels.
    n_sky_eff = np.pi * (r_out**2 - r_in**2) * 2.0 / np.pi

    def frac_sigma(star: int) -> np.ndarray:
        terms = synthetic.expected_star_terms(truth, star, radius, n_sky_eff)
        return terms["total"] / terms["flux_ap"]

    comps = record["comparison_stars"]
    unmatched = [c["name"] for c in comps if c["used"] and star_of.get(c["name"], -1) < 0]
    if unmatched:
        raise ValueError(f"{run_dir}: comparison stars {unmatched} are no simulated star")
    w = np.array([c["weight"] for c in comps if c["used"]])
    w = w / w.sum()
    ens_var = sum(
        wi**2 * frac_sigma(star_of[c["name"]]) ** 2
        for wi, c in zip(w, [c for c in comps if c["used"]], strict=True)
    )
    target = star_of["T1"]
    pred = np.sqrt(frac_sigma(target) ** 2 + ens_var)
    rows = truth.star_frames(target)
    # Divide out the true transit so every valid frame measures the noise (not only the few
    # out of transit); the truth's shape is exact, so nothing is fitted here.
    shape = np.asarray(rows["astro_factor"], float)
    sel = np.asarray(lc["valid"], bool)
    resid = np.asarray(lc["rel_flux"], float)[sel] / shape[sel]
    achieved = float(np.std(resid / np.mean(resid)))
    predicted = float(np.sqrt(np.mean(pred[sel] ** 2)))
    err = np.asarray(lc["rel_flux_err"], float)[sel] / shape[sel]
    median_err = float(np.median(np.asarray(lc["rel_flux_err"], float)[sel]))
    # reduced chi-square of the reported errors about a constant (the transit divided out)
    chi2_red = float(np.sum(((resid - np.mean(resid)) / err) ** 2) / (len(resid) - 1))
    # the ensemble's weights against the inverse of each used star's true variance
    used = [c for c in comps if c["used"]]
    true_w = np.array([1.0 / np.mean(frac_sigma(star_of[c["name"]])[sel] ** 2) for c in used])
    weight_ratio = {
        c["name"]: float(wi / tw) for c, wi, tw in zip(used, w, true_w / true_w.sum(), strict=True)
    }
    var_star = truth.meta["roles"]["variable_comp"]
    var_name = next((n for n, s in star_of.items() if s == var_star), None)
    var_entry = next((c for c in comps if c["name"] == var_name), None)
    fit = record["objects"]["T1"].get("fit")
    out = {
        "frames": record["frames"]["total"],
        "frames_ok": record["frames"]["by_status"].get("ok", 0),
        "true_depth": truth.meta["transit"]["depth"],
        "true_t0": truth.meta["transit"]["t0_bjd_tdb"],
        "depth": fit["params"]["depth"] if fit else None,
        "depth_err": fit["errors"]["depth"] if fit else None,
        "t0": fit["params"]["t0"] if fit else None,
        "t0_err": fit["errors"]["t0"] if fit else None,
        # profile-likelihood intervals (Δχ² = 4): where the truth should lie 95 % of the time
        "depth_2sigma": fit["intervals"]["depth"]["2sigma"] if fit else None,
        "t0_2sigma": fit["intervals"]["t0"]["2sigma"] if fit else None,
        "achieved_rms": achieved,
        "predicted_rms": predicted,
        "median_error": median_err,
        "chi2_red": chi2_red,
        "weight_ratio": weight_ratio,
        "n_points": int(sel.sum()),
        "comps_used": int(sum(c["used"] for c in comps)),
        "comps_rejected": {c["name"]: c["reason"] for c in comps if not c["used"]},
        "variable_comp": var_name,
        "variable_comp_reason": var_entry["reason"] if var_entry else "not among the candidates",
        "variable_comp_used": bool(var_entry["used"]) if var_entry else False,
    }
    return out


# Noise regimes of the precision tests and benchmark: SimConfig settings for each.
NOISE_REGIMES: dict[str, dict[str, Any]] = {
    # 1,200 frames at 14 s cadence: a 4.7-hour night
    # a fainter target (40,000 e- per exposure) under a dark sky: its photon noise (0.5 %)
    # outweighs the background (0.3 %) and the scintillation (0.18 %)
    "photon": {"target_mag": 12.5, "sky_zenith": 20.0, "exptime": 12.0, "cadence": 14.0},
    # a bright target in short exposures: scintillation (0.2 %) is twice the photon noise
    "scintillation": {"target_mag": 9.0, "exptime": 10.0, "cadence": 14.0},
    # thin cloud dips through the night and one frame of thick cloud
    "cloud": {"target_mag": 12.0, "exptime": 12.0, "cadence": 14.0, "cloud_frame": 300},
}


def regime_run(
    regime: str, base: str | Path, n_frames: int = 1200, seed: int | None = None
) -> dict[str, Any]:
    """Simulate a night in one of NOISE_REGIMES (256² px, 45 stars), reduce it, compare."""
    base = Path(base)
    cfg = synthetic.SimConfig(
        n_frames=n_frames,
        size=(256, 256),
        n_stars=45,
        seed=31 + sorted(NOISE_REGIMES).index(regime) if seed is None else seed,
        cosmic_rays=False,
        **NOISE_REGIMES[regime],
    )
    truth = synthetic.simulate_night(base / "night", cfg)
    pipeline.run(settings_for(base / "night", base / "out", truth, quiet=True))
    return compare_with_truth(truth, base / "out")


def run_demo(
    out: str | Path, n_frames: int = 150, size: tuple[int, int] = (1024, 1024), seed: int = 1
) -> dict[str, Any]:
    """Simulate a night, reduce it end to end into out/, print how it compares with the truth."""
    out = Path(out)
    night, red = out / "night", out / "reduction"
    print(f"simulating {n_frames} frames of {size[0]}x{size[1]} px into {night} ...", flush=True)
    cfg = synthetic.SimConfig(n_frames=n_frames, size=size, seed=seed)
    truth = synthetic.simulate_night(night, cfg)
    print(f"reducing into {red} ...", flush=True)
    summary = pipeline.run(settings_for(night, red, truth))
    c = compare_with_truth(truth, red)
    print(f"\nframes reduced: {c['frames_ok']} of {c['frames']}")
    if c["depth"] is not None:
        print(
            f"transit depth: {100 * c['depth']:.3f} ± {100 * c['depth_err']:.3f} %  "
            f"(simulated {100 * c['true_depth']:.3f} %, "
            f"{abs(c['depth'] - c['true_depth']) / c['depth_err']:.1f} sigma)"
        )
        print(
            f"mid-transit: {(c['t0'] - c['true_t0']) * 1440:+.2f} ± {c['t0_err'] * 1440:.2f} min "
            "from the simulated time"
        )
    print(
        f"scatter (true transit divided out): {1e3 * c['achieved_rms']:.3f} ppt achieved vs "
        f"{1e3 * c['predicted_rms']:.3f} ppt predicted by the noise model "
        f"(ratio {c['achieved_rms'] / c['predicted_rms']:.3f}); median reported error "
        f"{1e3 * c['median_error']:.3f} ppt (ratio {c['median_error'] / c['achieved_rms']:.3f})"
    )
    print(f"comparison stars: {c['comps_used']} kept, {len(c['comps_rejected'])} rejected")
    for name, why in c["comps_rejected"].items():
        tag = "  <- the simulated variable" if name == c["variable_comp"] else ""
        print(f"  {name}: {why}{tag}")
    print(
        f"\nproducts in {red}: results.ecsv, lightcurve_*.ecsv/.csv, run.json, records.json, "
        "report.html and the pictures (PNG and PDF): lightcurve, conditions, finder, noise_budget"
    )
    print(f"elapsed: {summary['elapsed_s']:.1f} s for the reduction")
    return c
