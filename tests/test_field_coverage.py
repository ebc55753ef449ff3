"""Field mode over seeds against truth: simulated fields with known variables (sinusoids,
eclipsing binaries, the target's transit and the simulator's variable comparison star), each
reduced end to end with ``--all-stars``. Three claims, counted over all seeds:

- every variable whose peak-to-peak amplitude is at least 3× its per-point noise is a candidate
  (the transiting target among them);
- constant stars are flagged no more often than the false-alarm rate: the false positives
  over all seeds are compared with α × (constant stars) at several α (the p-values of both
  tests are in field.ecsv, so one run answers every α) with a Poisson tolerance;
- the period of each periodic variable found (Lomb–Scargle for sinusoids, the Fourier method
  for eclipsing binaries, on its curve from field_lightcurves.parquet) lies within its
  reported 1-sigma error as often as 1 sigma promises (68.3 %, binomial tolerance), and a
  pick of another peak says the aliases are unresolved and lists the true period.

The transit of one night has no period to measure (a single event); its period recovery over
seeds is in tests/test_period.py (``test_bls_coverage_on_transits``).

Per-point noise is the truth's: the star's CCD-equation and scintillation terms
(``expected_star_terms``) in quadrature with the ensemble's, from the run's comparison weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy import stats

from tsphot import demo, pipeline, synthetic
from tsphot import period as pm
from tsphot.synthetic.truth import expected_star_terms

MIN_RATIO = 3.0  # the amplitude limit: peak-to-peak / per-point noise
ALPHAS = (0.001, 0.01, 0.05)  # false-alarm rates checked on the constant stars
ONE_SIGMA = stats.norm.cdf(1) - stats.norm.cdf(-1)  # 0.683
HEAVY_SEEDS = range(1, 11)
DEFAULT_SEEDS = (6,)  # a seed with sinusoids, an eclipsing binary and the transit, unblended


def field_config(seed: int) -> synthetic.SimConfig:
    """A 150-frame night (3.1 h) of 180 stars on 400×400 px, 10 of them field variables.

    About one measured star in ten varies (the target, the variable comparison star and the
    field variables): denser than real fields, sparse enough that the constant stars still
    set the field's calibration.
    """
    return synthetic.SimConfig(
        n_frames=150,
        size=(400, 400),
        n_stars=180,
        mag_range=(9.0, 15.0),
        n_field_variables=10,
        field_var_ptp=(0.008, 0.25),  # log-uniform: some below, most above the 3× limit
        field_var_mag=(9.5, 14.5),
        seed=seed,
    )


@dataclass
class Star:
    """One measured star of a field run, set against the truth."""

    seed: int
    name: str
    kind: str  # transit | sinusoid | eclipsing | constant | near_variable (not counted)
    ratio: float  # true peak-to-peak over per-point noise
    candidate: bool
    blended: bool
    p_chi2: float
    p_vn: float
    period: float | None = None  # true period (d)
    found: float | None = None  # period found, its error, whether aliases stay unresolved
    found_err: float | None = None
    unresolved: bool = False
    listed: bool = False  # the true period is the pick or among the listed aliases


def _series(lc: Table, name: str) -> pm.Series:
    s = lc[lc["star"] == name]
    ok = np.asarray(s["status"]) == "ok"
    return pm.make_series(
        [np.asarray(s["BJD_TDB"], float)[ok]],
        [np.asarray(s["diff_mag"], float)[ok]],
        [np.asarray(s["diff_mag_err"], float)[ok]],
    )


def _read_curves(out: Path) -> Table:
    path = out / "field_lightcurves.parquet"
    if path.exists():
        pq = pytest.importorskip("pyarrow.parquet")
        return Table(pq.read_table(path).to_pydict())
    return Table.read(out / "field_lightcurves.ecsv")


def field_seed(base: Path, seed: int) -> list[Star]:
    """Simulate, reduce with --all-stars and set every measured star against the truth."""
    truth = synthetic.simulate_night(base / f"night{seed}", field_config(seed), workers=2)
    out = base / f"out{seed}"
    settings = demo.settings_for(base / f"night{seed}", out, truth, quiet=True)
    pipeline.run(settings.model_copy(update={"all_stars": True}))
    f = Table.read(out / "field.ecsv")
    lc = _read_curves(out)
    record = json.loads((out / "run.json").read_text())
    radius = float(record["apertures"]["chosen_radius_px"])
    r_in, r_out = record["apertures"]["annulus_px"]
    n_sky = 2.0 * (r_out**2 - r_in**2)  # a median's variance: π/2 that of a mean of the ring

    tx, ty = np.asarray(truth.stars["x"], float), np.asarray(truth.stars["y"], float)
    flux = np.asarray(truth.stars["flux_e_per_s"], float)
    astro = np.asarray(truth.frames["astro_factor"], float).reshape(truth.n_frames, -1)
    varies = np.ptp(astro, axis=0) > 0
    kind_of = {int(s["id"]): str(s["var_type"]) for s in truth.stars if s["is_variable"]}
    period_of = {int(s["id"]): float(s["var_period_d"]) for s in truth.stars if s["is_variable"]}
    kind_of[truth.target] = "transit"

    def frac_sigma(star: int) -> np.ndarray:
        terms = expected_star_terms(truth, star, radius, n_sky)
        return terms["total"] / terms["flux_ap"]

    first = np.flatnonzero(np.asarray(f["role"]) != "field")
    star_of_name = {}
    for j in first:
        d = np.hypot(tx - f["x"][j], ty - f["y"][j])
        star_of_name[str(f["name"][j])] = int(np.argmin(d))
    used = [c for c in record["comparison_stars"] if c["used"]]
    w = np.array([c["weight"] for c in used])
    w = w / w.sum()
    ens_var = sum(
        wi**2 * frac_sigma(star_of_name[c["name"]]) ** 2 for wi, c in zip(w, used, strict=True)
    )

    rows = []
    for row in f:
        d = np.hypot(tx - row["x"], ty - row["y"])
        members = np.flatnonzero(d < 1.5)
        if members.size == 0:
            continue
        main = int(members[np.argmax(flux[members])])
        factor = (astro[:, members] * flux[members]).sum(1) / flux[members].sum()
        sigma = float(np.median(np.sqrt(frac_sigma(main) ** 2 + ens_var)))
        ratio = float(np.ptp(factor)) / sigma
        if main in kind_of:
            kind = kind_of[main]
        elif varies[d < r_out].any():  # a variable's light may reach this aperture or sky
            kind = "near_variable"
        else:
            kind = "constant"
        rows.append(
            Star(
                seed=seed,
                name=str(row["name"]),
                kind=kind,
                ratio=ratio,
                candidate=bool(row["candidate"]),
                blended="blended" in str(row["flags"]),
                p_chi2=float(row["p_chi2"]),
                p_vn=float(row["p_von_neumann"]),
                period=period_of.get(main),
            )
        )
    for s in rows:
        if s.kind not in ("sinusoid", "eclipsing") or not s.candidate or s.ratio < MIN_RATIO:
            continue
        series = _series(lc, s.name)
        span = float(series.t.max() - series.t.min())
        method = "ls" if s.kind == "sinusoid" else "fourier"
        r = pm.find_period(series, method, 0.15 * span, 1.5 * span, order=4)
        s.found, s.found_err, s.unresolved = r.period, r.period_err, r.aliases_unresolved
        near = [r.period] + [a.period for a in r.aliases if a.delta_chi2 < pm.ALIAS_THRESHOLD]
        errs = [r.period_err] + [
            a.period_err for a in r.aliases if a.delta_chi2 < pm.ALIAS_THRESHOLD
        ]
        s.listed = any(abs(p - s.period) < 3 * e for p, e in zip(near, errs, strict=True))
    return rows


def false_alarms(stars: list[Star], alpha: float) -> tuple[int, int]:
    """Constant, unblended stars flagged at false-alarm rate alpha, and how many there are."""
    const = [s for s in stars if s.kind == "constant" and not s.blended]
    flagged = [s for s in const if np.nan_to_num(s.p_chi2, nan=1) < alpha / 2 or s.p_vn < alpha / 2]
    return len(flagged), len(const)


def poisson_limit(mean: float, tail: float = 1e-3) -> int:
    """Largest count whose upper tail P(X ≥ count) under Poisson(mean) is still above tail."""
    return int(stats.poisson.isf(tail, mean))


def check(stars: list[Star], default_alpha: float, min_periods: int) -> dict:
    """Assert the three claims over all stars of all seeds; return the figures."""
    strong = [
        s
        for s in stars
        if s.kind in ("transit", "sinusoid", "eclipsing") and s.ratio >= MIN_RATIO and not s.blended
    ]
    missed = [(s.seed, s.name, s.kind, round(s.ratio, 2)) for s in strong if not s.candidate]
    assert not missed, f"variables above {MIN_RATIO}× the noise not found: {missed}"
    seeds = {s.seed for s in stars}
    transits = [s for s in strong if s.kind == "transit"]
    assert len(transits) == len(seeds), "the transiting target must be above the limit"
    periodic = [s for s in stars if s.kind in ("sinusoid", "eclipsing") and s.ratio >= MIN_RATIO]
    # blended stars are listed with their indices but never candidates: counted, not judged
    figures: dict = {"strong": len(strong), "kinds": {}}
    figures["blended_variables"] = sum(s.blended for s in periodic)
    for k in ("transit", "sinusoid", "eclipsing"):
        figures["kinds"][k] = sum(s.kind == k for s in strong)
    # false alarms: at most the Poisson 99.9 % point of alpha × (constant stars) at every alpha
    figures["false_alarms"] = {}
    for alpha in ALPHAS:
        n_false, n_const = false_alarms(stars, alpha)
        limit = poisson_limit(alpha * n_const)
        figures["false_alarms"][alpha] = (n_false, n_const, alpha * n_const, limit)
        assert n_false <= limit, f"alpha {alpha}: {n_false} of {n_const} constants flagged"
    n_false_run = sum(s.candidate for s in stars if s.kind == "constant" and not s.blended)
    assert n_false_run == false_alarms(stars, default_alpha)[0]  # the run's own flags agree
    # periods: coverage of the 1-sigma errors, aliases said and listed
    periodic = [s for s in strong if s.found is not None]
    z = np.array([(s.found - s.period) / s.found_err for s in periodic])
    picks = [s for s, zi in zip(periodic, z, strict=True) if abs(zi) > 5]
    bad_picks = [(s.seed, s.name, s.period, s.found) for s in picks if not s.unresolved]
    bad_picks += [(s.seed, s.name, s.period, s.found) for s in picks if not s.listed]
    assert not bad_picks, f"another peak picked without saying so or listing the truth: {bad_picks}"
    zc = z[np.abs(z) <= 5]
    assert zc.size >= min_periods, zc.size
    inside = int(np.sum(np.abs(zc) < 1))
    # two-sided binomial 99.9 % interval about 68.3 % for this many periods
    lo, hi = stats.binom.interval(0.999, zc.size, ONE_SIGMA)
    figures["periods"] = {
        "n": int(zc.size),
        "within_1_sigma": inside,
        "interval": (int(lo), int(hi)),
        "alias_picks": len(picks),
        "max_abs_z": float(np.max(np.abs(zc))),
    }
    assert lo <= inside <= hi, (figures["periods"], np.round(zc, 2))
    assert len(picks) <= max(1, 0.2 * len(periodic)), picks
    return figures


def test_field_variables_found_and_periods_covered_one_seed(tmp_path):
    """The default suite's version: one seed (the heavy test runs ten)."""
    stars = [s for seed in DEFAULT_SEEDS for s in field_seed(tmp_path, seed)]
    figures = check(stars, 0.001, min_periods=3)
    assert figures["kinds"]["sinusoid"] >= 2 and figures["kinds"]["eclipsing"] >= 1, figures


@pytest.mark.heavy
def test_field_variables_found_and_periods_covered_over_seeds(tmp_path):
    stars = [s for seed in HEAVY_SEEDS for s in field_seed(tmp_path, seed)]
    figures = check(stars, 0.001, min_periods=25)
    print(json.dumps(figures, indent=1, default=str))
    # measured 2026-11-23: 39 unblended variables above 3× (10 transits, 18 sinusoids, 11
    # eclipsing), all found; 15 blended ones listed; false alarms 0/456 at α = 0.001 (0.46
    # expected), 4/456 at 0.01 (4.6), 14/456 at 0.05 (22.8); 13 of 29 periods within 1 sigma
    # (45 %: inside the 99.9 % interval 11-27, but the single-night errors run small)
    assert figures["kinds"]["eclipsing"] >= 8 and figures["kinds"]["sinusoid"] >= 15, figures
