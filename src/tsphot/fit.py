"""Transit model fit and detrending of a differential light curve.

Model: ``flux = transit(t) × baseline``, with

- ``transit`` from batman (Mandel & Agol 2002; Kreidberg 2015), integrated over the exposure
  when ``exptime_s`` is given (supersampled, one sample every <= 15 s);
- ``baseline = c0 × (1 + Σ_i c_i (r_i − r̄_i))``: each regressor ``r_i`` (airmass, sky, FWHM, x,
  y, a meridian-flip step, powers of time ``time1 = t − t_ref`` [d], ``time2`` [d²], ...) enters
  centred on its mean ``r̄_i`` over the valid points (``FitResult.centres``), so ``c0`` is the
  out-of-transit level at the mean conditions and ``c_i`` is the fractional change per unit of
  ``r_i``.

The baseline is linear in ``(c0, c0·c_i)``, so for each trial of the nonlinear transit
parameters those coefficients are solved by weighted linear least squares (variable projection,
Golub & Pereyra 1973); ``scipy.optimize.least_squares`` (bounded trust region) sees only the
transit parameters. The covariance of every parameter (transit and baseline together) is
``(JᵀJ)⁻¹`` of the full weighted Jacobian at the optimum, from the reported flux errors; derived
quantities (depth = rp², T14, ``c_i``) are propagated through it with a numerical Jacobian.
The errors of t0, rp and depth are instead half the 68 % profile-likelihood interval: χ² is
scanned along the parameter with every other one refitted, and the interval is where it stays
within 1 (2 sigma: 4) of the minimum (Wilks 1938). Unlike the covariance, this stays right for
a shallow or partial transit whose duration trades against the baseline, and the scan also
escapes a local minimum. Where BIC chose fewer terms than offered, the intervals span the scans
of both the chosen and the full model, so a dropped trend that the transit can mimic still
widens them. ``detection_sigma`` = sqrt(χ²(no transit) − χ²).

Detrending terms are chosen by greedy forward selection on the Bayesian information criterion
``BIC = χ² + k ln N``: a term is added while it lowers BIC by more than ``MIN_DELTA_BIC`` (2,
"positive evidence", Kass & Raftery 1995). For the selection only, χ² uses the errors rescaled
by ``sqrt(χ²_red)`` of the fit with every candidate term (the least biased noise estimate at
hand), so that understated errors do not buy extra terms and overstated ones do not hide real
trends; the reported ``bic`` uses the errors as given. Powers of time enter in order
(``time2`` only after ``time1``). Outliers beyond ``clip_sigma`` (in units of the robust scatter
of the normalised residuals) are clipped iteratively, and reported in ``mask`` / ``n_clipped``.

Everything is deterministic: no random numbers, fixed starting points (the best of a grid in
``t0`` plus the user's guess).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.linalg.lapack import dgels as _dgels
from scipy.optimize import least_squares

from tsphot.errors import TsphotError

__all__ = [
    "BOUNDS",
    "FitError",
    "FitResult",
    "TransitParams",
    "detrend",
    "fit_transit",
    "t14_hours",
    "transit_model",
]

# Bounds of the free transit parameters (t0 is bounded by the span of the data instead).
BOUNDS: dict[str, tuple[float, float]] = {
    "rp": (0.01, 0.5),
    "a": (1.5, 50.0),
    "inc": (50.0, 90.0),
}
# Absolute finite-difference steps (t0 in days, inc in degrees).
_STEP = {"t0": 1e-5, "rp": 1e-5, "a": 1e-4, "inc": 1e-3}
# Typical scales handed to the optimiser.
_SCALE = {"t0": 1e-3, "rp": 1e-2, "a": 0.1, "inc": 0.5}
FREE_NAMES = ("t0", "rp", "a", "inc")
MIN_DELTA_BIC = 2.0
SUBEXPOSURE_S = 15.0
MAX_CLIP_ITER = 10
# Profile likelihood: Δχ² levels of the reported intervals (Wilks: 1 and 2 sigma for one
# parameter), where a scan stops (3 sigma), and the most steps taken on either side.
PROFILE_LEVELS = {"1sigma": 1.0, "2sigma": 4.0}
PROFILE_STOP = 9.0
PROFILE_MAX_STEPS = 60
# Below this detection significance (sigma) the fit warns that its parameters are loose.
WEAK_DETECTION = 7.0
# Relative tolerance of the refits along a profile: χ² ~ N to 1e-6 N is ample for Δχ² levels.
PROFILE_TOL = 1e-6
# A profile point this much below the optimum's χ² means the optimiser sat in a local minimum.
PROFILE_BETTER = 0.01
_N_LD = {
    "uniform": 0,
    "linear": 1,
    "quadratic": 2,
    "squareroot": 2,
    "logarithmic": 2,
    "exponential": 2,
    "power2": 2,
    "nonlinear": 4,
}


class FitError(TsphotError, ValueError):
    """A light-curve fit cannot be set up or run (too few points, bad inputs)."""


@dataclass
class TransitParams:
    """Transit parameters: fixed inputs, and initial guesses for the free ones."""

    t0: float  # BJD_TDB [d], initial guess of the mid-transit time
    period: float  # [d], fixed
    rp: float  # Rp/Rs, initial guess
    a: float  # a/Rs
    inc: float  # [deg]
    ecc: float = 0.0
    w: float = 90.0  # argument of periastron [deg]
    u: tuple[float, ...] = (0.4, 0.25)  # limb-darkening coefficients, batman's convention
    limb_dark: str = "quadratic"  # batman law name; 'nonlinear' takes 4 coefficients

    def replace(self, **changes: float) -> TransitParams:
        """Copy with some fields changed."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return TransitParams(**values)


@dataclass
class FitResult:
    """Best fit of a light curve: values, 1-sigma errors, goodness of fit, model arrays."""

    params: dict[str, float]  # t0, rp, depth, a, inc, t14_h (transit fits); c0, c_<term>
    errors: dict[str, float]  # 1 sigma from the covariance with the errors as given
    errors_scaled: dict[str, float]  # errors × sqrt(max(1, chi2_red))
    chi2: float
    dof: int
    chi2_red: float
    residual_rms: float  # RMS of data / model − 1 over the points used (relative flux)
    model: np.ndarray  # transit × baseline at every input time
    transit: np.ndarray  # transit only (ones for detrend)
    baseline: np.ndarray  # systematics model c0 × (1 + Σ c_i (r_i − r̄_i))
    bic: float  # chi2 + k ln N with the errors as given
    terms: list[str]  # detrending terms used, in the order they were selected
    mask: np.ndarray  # True where a point was used (valid and not clipped)
    n_clipped: int = 0  # valid points rejected as outliers
    n_invalid: int = 0  # points with non-finite time, flux, error or regressor, or error <= 0
    centres: dict[str, float] = field(default_factory=dict)  # r̄_i of each term
    t_ref: float = 0.0  # reference time of the time terms [d]
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    cov_names: list[str] = field(default_factory=list)  # row/column names of covariance
    free: tuple[str, ...] = ()
    selection: list[tuple[list[str], float]] = field(default_factory=list)  # (terms, BIC_sel)
    notes: list[str] = field(default_factory=list)
    success: bool = True
    # sqrt(χ²(no transit, same baseline) − χ²): how strongly the data prefer a transit
    detection_sigma: float = float("nan")
    # profile-likelihood intervals of t0 and depth: {name: {"1sigma": (lo, hi), "2sigma": ...}}
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Transit model
# ---------------------------------------------------------------------------------------------


def _check_params(params: TransitParams) -> None:
    n = _N_LD.get(params.limb_dark)
    if n is None:
        raise FitError(f"limb_dark {params.limb_dark!r} is not a batman law ({sorted(_N_LD)})")
    if len(params.u) != n:
        raise FitError(
            f"limb_dark {params.limb_dark!r} takes {n} coefficients; got u = {tuple(params.u)}"
        )
    if not params.period > 0:
        raise FitError(f"period must be > 0 days; got {params.period}")
    if not 0 <= params.ecc < 1:
        raise FitError(f"ecc must be in [0, 1); got {params.ecc}")


class _Transit:
    """A batman model built once for fixed times; evaluated for new (t0, rp, a, inc)."""

    def __init__(self, t: np.ndarray, params: TransitParams, exptime_s: float | None) -> None:
        import batman

        _check_params(params)
        self.params = params
        self.bp = batman.TransitParams()
        self._set(params.t0, params.rp, params.a, params.inc)
        self.bp.per = float(params.period)
        self.bp.ecc = float(params.ecc)
        self.bp.w = float(params.w)
        self.bp.u = [float(c) for c in params.u]
        self.bp.limb_dark = params.limb_dark
        kwargs: dict[str, float | int] = {}
        if exptime_s is not None and exptime_s > 0:
            kwargs["supersample_factor"] = max(2, math.ceil(exptime_s / SUBEXPOSURE_S))
            kwargs["exp_time"] = exptime_s / 86400.0
        # For 'nonlinear' batman integrates numerically with a step fixed here (max_err 1 ppm);
        # the error is smooth in the parameters, so finite differences stay clean.
        self.model = batman.TransitModel(self.bp, np.ascontiguousarray(t, dtype=float), **kwargs)

    def _set(self, t0: float, rp: float, a: float, inc: float) -> None:
        self.bp.t0, self.bp.rp, self.bp.a, self.bp.inc = float(t0), float(rp), float(a), float(inc)

    def __call__(self, t0: float, rp: float, a: float, inc: float) -> np.ndarray:
        self._set(t0, rp, a, inc)
        return np.asarray(self.model.light_curve(self.bp), dtype=float)


def transit_model(
    t: np.ndarray, params: TransitParams, *, exptime_s: float | None = None
) -> np.ndarray:
    """Relative flux of a limb-darkened transit at times t (d), averaged over exptime_s (s)."""
    t = np.asarray(t, dtype=float)
    if t.size == 0:
        return np.zeros(0)
    return _Transit(t.ravel(), params, exptime_s)(
        params.t0, params.rp, params.a, params.inc
    ).reshape(t.shape)


def t14_hours(params: TransitParams) -> float:
    """Total transit duration T14 in hours (Winn 2010, eqs. 14 and 16); 0 if no transit."""
    e, w = params.ecc, math.radians(params.w)
    inc = math.radians(params.inc)
    ecc_factor = math.sqrt(1 - e**2) / (1 + e * math.sin(w))
    b = params.a * math.cos(inc) * (1 - e**2) / (1 + e * math.sin(w))
    arg = (1 + params.rp) ** 2 - b**2
    if arg <= 0:
        return 0.0
    x = math.sqrt(arg) / (params.a * math.sin(inc))
    return params.period / math.pi * math.asin(min(1.0, x)) * ecc_factor * 24.0


# ---------------------------------------------------------------------------------------------
# The fit machinery
# ---------------------------------------------------------------------------------------------


@dataclass
class _Problem:
    """Data and design of one fit; the mask and the term list vary, the rest is fixed."""

    t: np.ndarray
    flux: np.ndarray
    err: np.ndarray
    columns: dict[str, np.ndarray]  # standardised regressors (centred, unit std) over all points
    centres: dict[str, float]
    scales: dict[str, float]
    t_ref: float
    transit: _Transit | None
    params: TransitParams
    free: tuple[str, ...]


@dataclass
class _Solution:
    x: np.ndarray  # free transit parameters (t0 as offset from t_ref)
    b: np.ndarray  # linear coefficients (c0, c0·c_i·scale_i)
    chi2: float
    terms: list[str]
    mask: np.ndarray
    success: bool = True
    message: str = ""


def _x_to_dict(prob: _Problem, x: np.ndarray) -> dict[str, float]:
    p = prob.params
    values = {"t0": p.t0, "rp": p.rp, "a": p.a, "inc": p.inc}
    for name, v in zip(prob.free, x, strict=True):
        values[name] = float(v) + (prob.t_ref if name == "t0" else 0.0)
    return values


def _transit_at(prob: _Problem, x: np.ndarray) -> np.ndarray:
    if prob.transit is None:
        return np.ones_like(prob.t)
    v = _x_to_dict(prob, x)
    return prob.transit(v["t0"], v["rp"], v["a"], v["inc"])


def _design(prob: _Problem, terms: list[str]) -> np.ndarray:
    cols = [np.ones_like(prob.t)] + [prob.columns[name] for name in terms]
    return np.column_stack(cols)


def _solve_linear(
    tr: np.ndarray, design: np.ndarray, prob: _Problem, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linear coefficients and weighted residuals (masked points only) for a given transit."""
    w = 1.0 / prob.err[mask]
    a = design[mask] * (tr[mask] * w)[:, None]
    y = prob.flux[mask] * w
    b, *_ = np.linalg.lstsq(a, y, rcond=None)
    return b, y - a @ b


def _projector(
    design: np.ndarray, prob: _Problem, mask: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """Weighted residuals as a function of the transit (masked points), for the optimiser.

    Same numbers as ``_solve_linear`` (to ~1e-15) at a third of its cost: the masked design
    and weights are taken once per fit, not once per evaluation, and the small least-squares
    problem goes to LAPACK's QR solver (``dgels``) without numpy's SVD and its checks. A
    rank-deficient design (collinear regressors) falls back to the minimum-norm SVD solution.
    """
    w = 1.0 / prob.err[mask]
    dw = design[mask] * w[:, None]
    y = prob.flux[mask] * w
    k = dw.shape[1]

    def residuals(tr: np.ndarray) -> np.ndarray:
        a = dw * tr[mask][:, None]
        qr, b, info = _dgels(a, y)
        r_diag = np.abs(np.diagonal(qr[:k, :k]))
        if info != 0 or not r_diag.min() > 1e-12 * r_diag.max():
            b, *_ = np.linalg.lstsq(a, y, rcond=None)
            return y - a @ b
        return y - a @ b[:k]

    return residuals


def _bounds(prob: _Problem, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = [], []
    tmin, tmax = prob.t[mask].min() - prob.t_ref, prob.t[mask].max() - prob.t_ref
    for name in prob.free:
        if name == "t0":
            lo.append(tmin)
            hi.append(tmax)
        else:
            lo.append(BOUNDS[name][0])
            hi.append(BOUNDS[name][1])
    return np.array(lo, dtype=float), np.array(hi, dtype=float)


def _inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    pad = 1e-9 * np.maximum(1.0, hi - lo)
    return np.clip(x, lo + pad, hi - pad)


def _optimise(
    prob: _Problem,
    terms: list[str],
    mask: np.ndarray,
    starts: list[np.ndarray],
    tol: float = 1e-9,
) -> _Solution:
    """Best nonlinear fit over several starting points (variable projection for the baseline)."""
    design = _design(prob, terms)
    if not prob.free:
        tr = _transit_at(prob, np.zeros(0))
        b, r = _solve_linear(tr, design, prob, mask)
        return _Solution(np.zeros(0), b, float(r @ r), list(terms), mask.copy())

    lo, hi = _bounds(prob, mask)

    project = _projector(design, prob, mask)

    def residuals(x: np.ndarray) -> np.ndarray:
        return project(_transit_at(prob, x))

    def jacobian(x: np.ndarray) -> np.ndarray:
        # Central differences with absolute steps (scipy's relative steps vanish at x = 0),
        # one-sided where a bound is closer than a step.
        cols = []
        for i, h in enumerate(steps):
            up, dn = x.copy(), x.copy()
            if x[i] + h > hi[i]:
                dn[i] -= h
                cols.append((residuals(up) - residuals(dn)) / h)
            elif x[i] - h < lo[i]:
                up[i] += h
                cols.append((residuals(up) - residuals(dn)) / h)
            else:
                up[i] += h
                dn[i] -= h
                cols.append((residuals(up) - residuals(dn)) / (2 * h))
        return np.column_stack(cols)

    steps = np.array([_STEP[n] for n in prob.free])
    x_scale = np.array([_SCALE[n] for n in prob.free])
    dof = int(mask.sum()) - _n_params(prob, terms)
    # A fit is "poor" if chi2 exceeds its expectation by 4 sigma; then the other starts are tried.
    poor = dof + 4.0 * math.sqrt(2.0 * max(dof, 1))
    best: _Solution | None = None
    for x0 in starts:
        if best is not None and best.chi2 <= poor:
            break
        x0 = _inside(np.asarray(x0, dtype=float), lo, hi)
        res = least_squares(
            residuals,
            x0,
            bounds=(lo, hi),
            jac=jacobian,
            x_scale=x_scale,
            method="trf",
            xtol=10 * tol,
            ftol=tol,
            gtol=tol,
            max_nfev=400,
        )
        chi2 = float(res.fun @ res.fun)
        if best is None or chi2 < best.chi2 - 1e-9:
            b, _ = _solve_linear(_transit_at(prob, res.x), design, prob, mask)
            best = _Solution(res.x, b, chi2, list(terms), mask.copy(), res.status > 0, res.message)
    assert best is not None
    return best


def _t0_grid_starts(prob: _Problem, terms: list[str], mask: np.ndarray, n_best: int = 3) -> list:
    """Starting points, best first: minima of χ²(t0) on a grid, and the user's guess."""
    p = prob.params
    x_user = np.array([getattr(p, n) - (prob.t_ref if n == "t0" else 0.0) for n in prob.free])
    if "t0" not in prob.free:
        return [x_user]
    i_t0 = prob.free.index("t0")
    tmin, tmax = prob.t[mask].min(), prob.t[mask].max()
    dur_d = max(t14_hours(p) / 24.0, 0.01)
    step = min(dur_d / 20.0, (tmax - tmin) / 50.0)
    grid = np.arange(tmin, tmax + 0.5 * step, step)
    design = _design(prob, terms)

    def chi2_at(t0: float) -> float:
        x = x_user.copy()
        x[i_t0] = t0 - prob.t_ref
        r = _solve_linear(_transit_at(prob, x), design, prob, mask)[1]
        return float(r @ r)

    chi2 = np.array([chi2_at(t0) for t0 in grid])
    # Local minima, best first, at least a quarter of a duration apart.
    candidates: list[tuple[float, float]] = []
    for i in np.argsort(chi2, kind="stable"):
        lower_left = i == 0 or chi2[i] <= chi2[i - 1]
        lower_right = i == grid.size - 1 or chi2[i] <= chi2[i + 1]
        if not (lower_left and lower_right):
            continue
        if all(abs(grid[i] - c) > dur_d / 4.0 for _, c in candidates):
            candidates.append((float(chi2[i]), float(grid[i])))
        if len(candidates) >= n_best:
            break
    t0_user = float(np.clip(p.t0, tmin, tmax))
    if all(abs(t0_user - c) > step for _, c in candidates):
        candidates.append((chi2_at(t0_user), t0_user))
    starts = []
    for _, t0 in sorted(candidates):
        x = x_user.copy()
        x[i_t0] = t0 - prob.t_ref
        starts.append(x)
    return starts


def _fixed(prob: _Problem, name: str, value: float) -> _Problem:
    """The problem with one free parameter held at an absolute value (t0 in BJD, not offset)."""
    rest = tuple(n for n in prob.free if n != name)
    return replace(prob, free=rest, params=prob.params.replace(**{name: value}))


def _param_bounds(prob: _Problem, name: str, mask: np.ndarray) -> tuple[float, float]:
    if name == "t0":
        return float(prob.t[mask].min()), float(prob.t[mask].max())
    return BOUNDS[name]


def _scan(
    prob: _Problem, sol: _Solution, name: str, step: float
) -> tuple[list[tuple[float, float]], np.ndarray | None]:
    """Profile χ² of one parameter, walked out from the optimum on both sides.

    Returns the points (value, Δχ²), sorted by value, and the full parameter vector of a point
    better than the optimum (None if there is none). Each point re-optimises the other free
    transit parameters (continued from its neighbour) and the linear baseline.
    """
    i = prob.free.index(name)
    best = _x_to_dict(prob, sol.x)[name]
    # Other starts for the remaining parameters where the profile crosses a level: the
    # optimum's and the user's values (a duration branch continuation left is found again).
    rest = [n for n in prob.free if n != name]
    user = np.array(
        [getattr(prob.params, n) - (prob.t_ref if n == "t0" else 0.0) for n in rest], dtype=float
    )
    others = [np.delete(sol.x, i), user]
    lo, hi = _param_bounds(prob, name, sol.mask)
    points = [(best, 0.0)]
    better: tuple[float, np.ndarray] | None = None
    for direction in (-1.0, 1.0):
        v, h = best, step
        x_rest = np.delete(sol.x, i)
        previous = 0.0
        for _ in range(PROFILE_MAX_STEPS):
            if (direction < 0 and v <= lo) or (direction > 0 and v >= hi):
                break
            v = float(np.clip(v + direction * h, lo, hi))
            sub = _fixed(prob, name, v)
            s = _optimise(sub, sol.terms, sol.mask, [x_rest], PROFILE_TOL)
            rise = s.chi2 - sol.chi2
            if any(previous < lvl <= rise for lvl in (*PROFILE_LEVELS.values(), PROFILE_STOP)):
                # about to close an interval: first make sure no other branch stays lower
                for x_other in others:
                    alt = _optimise(sub, sol.terms, sol.mask, [x_other], PROFILE_TOL)
                    if alt.chi2 < s.chi2 - 1e-6:
                        s = alt
            d = s.chi2 - sol.chi2
            points.append((v, d))
            x_rest = s.x
            if d < -PROFILE_BETTER and (better is None or d < better[0]):
                x = np.insert(s.x, i, v - (prob.t_ref if name == "t0" else 0.0))
                better = (d, x)
            if d >= PROFILE_STOP:
                break
            # Where the profile is flat (a degenerate or bimodal likelihood), stride out.
            if d - previous < 0.5:
                h *= 1.3
            previous = d
    points.sort()
    return points, (None if better is None else better[1])


def _interval(
    points: list[tuple[float, float]], level: float, bounds: tuple[float, float]
) -> tuple[float, float]:
    """Outermost values where the profile Δχ² stays below level, interpolated at the crossing."""
    v = np.array([p[0] for p in points])
    d = np.array([p[1] for p in points])
    inside = np.nonzero(d < level)[0]
    j_lo, j_hi = int(inside.min()), int(inside.max())

    def cross(j_in: int, j_out: int) -> float:
        # sqrt(Δχ²) is linear in the parameter where the likelihood is Gaussian: interpolate it
        r_in, r_out = math.sqrt(max(d[j_in], 0.0)), math.sqrt(d[j_out])
        frac = (math.sqrt(level) - r_in) / (r_out - r_in)
        return float(v[j_in] + frac * (v[j_out] - v[j_in]))

    low = cross(j_lo, j_lo - 1) if j_lo > 0 else bounds[0]
    high = cross(j_hi, j_hi + 1) if j_hi < v.size - 1 else bounds[1]
    return low, high


def _profiles(
    prob: _Problem,
    sol: _Solution,
    sigma: dict[str, float],
    notes: list[str],
    which: tuple[str, ...] = ("t0", "rp"),
) -> tuple[_Solution, dict[str, dict[str, tuple[float, float]]]]:
    """Profile-likelihood intervals of t0 and rp; a better minimum found on the way is taken."""
    names = [n for n in which if n in prob.free]
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    for attempt in range(4):
        intervals = {}
        moved = False
        for name in names:
            lo, hi = _param_bounds(prob, name, sol.mask)
            s = sigma.get(name, float("nan"))
            step = s / 2.0 if np.isfinite(s) and s > 0 else (hi - lo) / 200.0
            step = min(max(step, 1e-6 * (hi - lo)), (hi - lo) / 20.0)
            points, better = _scan(prob, sol, name, step)
            if better is not None and attempt < 3:
                sol = _optimise(prob, sol.terms, sol.mask, [better])
                notes.append(f"the profile of {name} found a better fit; the fit restarted there")
                moved = True
                break
            intervals[name] = {
                key: _interval(points, level, (lo, hi)) for key, level in PROFILE_LEVELS.items()
            }
        if not moved:
            break
    return sol, intervals


def _envelope(
    a: dict[str, dict[str, tuple[float, float]]], b: dict[str, dict[str, tuple[float, float]]]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per parameter and level, the smallest interval holding both."""
    out = {}
    for name, levels in a.items():
        out[name] = {
            key: (min(lo, b[name][key][0]), max(hi, b[name][key][1])) if name in b else (lo, hi)
            for key, (lo, hi) in levels.items()
        }
    return out


def _apply_intervals(
    res: FitResult, intervals: dict[str, dict[str, tuple[float, float]]], notes: list[str]
) -> None:
    """Report the profile intervals, and their half-widths as the errors of t0, rp and depth."""
    inflation = math.sqrt(max(1.0, res.chi2_red)) if np.isfinite(res.chi2_red) else 1.0
    for name, by_level in intervals.items():
        targets = {name: by_level}
        if name == "rp":
            targets["depth"] = {k: (lo * lo, hi * hi) for k, (lo, hi) in by_level.items()}
        for key, levels in targets.items():
            res.intervals[key] = levels
            lo, hi = levels["1sigma"]
            res.errors[key] = 0.5 * (hi - lo)
            res.errors_scaled[key] = res.errors[key] * inflation
    if intervals:
        notes.append(
            "errors of " + ", ".join(res.intervals) + " are half the 68 % profile-likelihood "
            "interval (Δχ² = 1, the other parameters refitted)"
        )


def _normalised_residuals(prob: _Problem, sol: _Solution) -> np.ndarray:
    model = _transit_at(prob, sol.x) * (_design(prob, sol.terms) @ sol.b)
    return (prob.flux - model) / prob.err


def _clip(prob: _Problem, sol: _Solution, valid: np.ndarray, clip_sigma: float) -> np.ndarray:
    """New mask: valid points within clip_sigma robust standard deviations of the model."""
    z = _normalised_residuals(prob, sol)
    zv = z[sol.mask]
    centre = np.median(zv)
    scale = 1.4826 * np.median(np.abs(zv - centre))
    if not scale > 0:
        return sol.mask.copy()
    new = valid.copy()
    new[valid] = np.abs(z[valid] - centre) <= clip_sigma * scale
    return new


def _fit_with_clipping(
    prob: _Problem,
    terms: list[str],
    valid: np.ndarray,
    mask: np.ndarray,
    starts: list[np.ndarray],
    clip_sigma: float,
) -> _Solution:
    sol = _optimise(prob, terms, mask, starts)
    if not clip_sigma or clip_sigma <= 0:
        return sol
    for _ in range(MAX_CLIP_ITER):
        new = _clip(prob, sol, valid, clip_sigma)
        if np.array_equal(new, sol.mask):
            break
        _check_enough(prob, terms, new)
        sol = _optimise(prob, terms, new, [sol.x])
    return sol


def _n_params(prob: _Problem, terms: list[str]) -> int:
    return len(prob.free) + 1 + len(terms)


def _check_enough(prob: _Problem, terms: list[str], mask: np.ndarray) -> None:
    k = _n_params(prob, terms)
    if mask.sum() <= k:
        raise FitError(
            f"only {int(mask.sum())} usable points for {k} parameters; "
            "give more points, fewer free parameters or fewer regressors"
        )


def _select(
    prob: _Problem,
    candidates: list[str],
    mask: np.ndarray,
    start: np.ndarray,
    inflate: float,
) -> tuple[list[str], list[tuple[list[str], float]]]:
    """Greedy forward selection of detrending terms on BIC (errors multiplied by `inflate`)."""
    n = int(mask.sum())

    def bic(sol: _Solution) -> float:
        return sol.chi2 / inflate**2 + _n_params(prob, sol.terms) * math.log(n)

    current = _optimise(prob, [], mask, [start])
    history = [([], bic(current))]
    chosen: list[str] = []
    while True:
        eligible = [c for c in candidates if c not in chosen and _eligible(c, chosen)]
        trials = []
        for c in eligible:
            if mask.sum() <= _n_params(prob, [*chosen, c]):
                continue
            sol = _optimise(prob, [*chosen, c], mask, [current.x, start])
            trials.append((bic(sol), c, sol))
        if not trials:
            break
        best_bic, best_c, best_sol = min(trials, key=lambda item: item[0])
        if best_bic < history[-1][1] - MIN_DELTA_BIC:
            chosen.append(best_c)
            current = best_sol
            history.append((list(chosen), best_bic))
        else:
            break
    return chosen, history


def _eligible(term: str, chosen: list[str]) -> bool:
    """Powers of time enter in order: timeK only once time(K-1) is in."""
    if term.startswith("time") and term[4:].isdigit():
        k = int(term[4:])
        return k == 1 or f"time{k - 1}" in chosen
    return True


def _numerical_jacobian(
    fun: Callable[[np.ndarray], np.ndarray], theta: np.ndarray, steps: np.ndarray
) -> np.ndarray:
    cols = []
    for i, h in enumerate(steps):
        up, dn = theta.copy(), theta.copy()
        up[i] += h
        dn[i] -= h
        cols.append((fun(up) - fun(dn)) / (2 * h))
    return np.column_stack(cols) if cols else np.zeros((fun(theta).size, 0))


def _finish(
    prob: _Problem, sol: _Solution, valid: np.ndarray, selection: list, notes: list[str]
) -> FitResult:
    """Covariance, derived quantities and model arrays of a solution."""
    mask = sol.mask
    nx = len(prob.free)
    design = _design(prob, sol.terms)
    w = 1.0 / prob.err[mask]

    def model_of(theta: np.ndarray, rows: np.ndarray | slice = mask) -> np.ndarray:
        return _transit_at(prob, theta[:nx])[rows] * (design[rows] @ theta[nx:])

    theta = np.concatenate([sol.x, sol.b])
    # Full weighted Jacobian: numerical for transit parameters, exact for the linear ones.
    jx = _numerical_jacobian(
        lambda xx: model_of(np.concatenate([xx, sol.b])),
        sol.x,
        np.array([_STEP[n] for n in prob.free]),
    )
    tr = _transit_at(prob, sol.x)
    jb = design[mask] * tr[mask][:, None]
    jac = np.column_stack([jx, jb]) * w[:, None]
    # Scale columns before inverting: parameters differ by orders of magnitude.
    norms = np.sqrt(np.sum(jac**2, axis=0))
    norms[norms == 0] = 1.0
    js = jac / norms
    cov = np.linalg.pinv(js.T @ js, rcond=1e-12, hermitian=True) / np.outer(norms, norms)
    if np.any(np.linalg.svd(js, compute_uv=False) < 1e-10 * np.sqrt(js.shape[0])):
        notes.append("design is degenerate: some parameters are not constrained by the data")

    # Reported quantities and their covariance.
    p = prob.params
    names: list[str] = []
    if prob.transit is not None:
        names = ["t0", "rp", "depth", "a", "inc", "t14_h"]
    names += ["c0"] + [f"c_{term}" for term in sol.terms]

    def reported(th: np.ndarray) -> np.ndarray:
        out = []
        if prob.transit is not None:
            v = _x_to_dict(prob, th[:nx])
            out += [v["t0"], v["rp"], v["rp"] ** 2, v["a"], v["inc"]]
            out.append(t14_hours(p.replace(rp=v["rp"], a=v["a"], inc=v["inc"])))
        b = th[nx:]
        out.append(b[0])
        out += [b[1 + j] / (b[0] * prob.scales[term]) for j, term in enumerate(sol.terms)]
        return np.array(out, dtype=float)

    values = reported(theta)
    sig = np.sqrt(np.clip(np.diag(cov), 0, None))
    steps = np.where(sig > 0, sig * 1e-3, 1e-9)
    g = _numerical_jacobian(reported, theta, steps)
    cov_rep = g @ cov @ g.T
    err_rep = np.sqrt(np.clip(np.diag(cov_rep), 0, None))

    fitted = set(prob.free) | {"c0"} | {f"c_{term}" for term in sol.terms}
    if "rp" in prob.free:
        fitted.add("depth")
    if prob.free and prob.transit is not None and set(prob.free) & {"rp", "a", "inc"}:
        fitted.add("t14_h")
    params = {n: float(v) for n, v in zip(names, values, strict=True)}
    keep = [i for i, n in enumerate(names) if n in fitted]
    errors = {names[i]: float(err_rep[i]) for i in keep}

    n = int(mask.sum())
    k = _n_params(prob, sol.terms)
    dof = n - k
    chi2 = sol.chi2
    chi2_red = chi2 / dof if dof > 0 else float("nan")
    inflation = math.sqrt(max(1.0, chi2_red)) if np.isfinite(chi2_red) else 1.0
    errors_scaled = {key: v * inflation for key, v in errors.items()}

    transit_full = _transit_at(prob, sol.x)
    baseline = _design(prob, sol.terms) @ sol.b
    model = transit_full * baseline
    rel = prob.flux[mask] / model[mask] - 1.0
    rms = float(np.sqrt(np.mean(rel**2)))
    for name in prob.free:
        if name == "t0":
            lo, hi = prob.t[mask].min(), prob.t[mask].max()
        else:
            lo, hi = BOUNDS[name]
        v = params[name]
        if min(v - lo, hi - v) < 1e-6 * max(1.0, hi - lo):
            # A Gaussian error means nothing at a bound (inc = 90 is a turning point).
            errors[name] = errors_scaled[name] = float("nan")
            notes.append(f"{name} = {v:.6g} is at its bound [{lo:.6g}, {hi:.6g}]; error set to NaN")
    if not sol.success:
        notes.append(f"optimiser did not converge: {sol.message}")
    n_clipped = int(valid.sum() - mask.sum())
    if n_clipped:
        notes.append(f"{n_clipped} outlier(s) clipped")
    return FitResult(
        params=params,
        errors=errors,
        errors_scaled=errors_scaled,
        chi2=chi2,
        dof=dof,
        chi2_red=chi2_red,
        residual_rms=rms,
        model=model,
        transit=transit_full,
        baseline=baseline,
        bic=chi2 + k * math.log(n),
        terms=list(sol.terms),
        mask=mask.copy(),
        n_clipped=n_clipped,
        n_invalid=int((~valid).sum()),
        centres={term: prob.centres[term] for term in sol.terms},
        t_ref=prob.t_ref,
        covariance=cov_rep[np.ix_(keep, keep)],
        cov_names=[names[i] for i in keep],
        free=prob.free,
        selection=selection,
        notes=notes,
        success=sol.success,
    )


def _prepare(
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    regressors: Mapping[str, np.ndarray] | None,
    baseline_order: int,
    params: TransitParams | None,
    free: tuple[str, ...],
    exptime_s: float | None,
) -> tuple[_Problem, np.ndarray, list[str], list[str]]:
    t = np.asarray(t, dtype=float).ravel()
    flux = np.asarray(flux, dtype=float).ravel()
    err = np.broadcast_to(np.asarray(flux_err, dtype=float), t.shape).astype(float).ravel()
    if flux.shape != t.shape:
        raise FitError(f"flux has {flux.size} points but t has {t.size}")
    if baseline_order < 0:
        raise FitError(f"baseline_order must be >= 0; got {baseline_order}")
    unknown = set(free) - set(FREE_NAMES)
    if unknown:
        raise FitError(f"cannot fit {sorted(unknown)}; free parameters are among {FREE_NAMES}")
    notes: list[str] = []
    raw: dict[str, np.ndarray] = {}
    for name, values in (regressors or {}).items():
        arr = np.asarray(values, dtype=float).ravel()
        if arr.shape != t.shape:
            raise FitError(f"regressor {name!r} has {arr.size} values but t has {t.size}")
        if name == "c0" or (name.startswith("time") and name[4:].isdigit()):
            raise FitError(f"regressor name {name!r} is reserved; rename it")
        raw[name] = arr
    valid = np.isfinite(t) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    for arr in raw.values():
        valid &= np.isfinite(arr)
    if valid.sum() < 3:
        raise FitError(f"only {int(valid.sum())} points have finite time, flux, error > 0")
    if int((~valid).sum()):
        notes.append(f"{int((~valid).sum())} point(s) with non-finite values or error <= 0 unused")
    t_ref = float(np.mean(t[valid]))
    for k in range(1, baseline_order + 1):
        raw[f"time{k}"] = (t - t_ref) ** k
    columns, centres, scales = {}, {}, {}
    candidates = []
    for name, arr in raw.items():
        centre = float(np.mean(arr[valid]))
        scale = float(np.std(arr[valid]))
        if not scale > 0 or scale < 1e-12 * max(1.0, abs(centre)):
            notes.append(f"regressor {name!r} is constant over the valid points; not used")
            continue
        columns[name] = (arr - centre) / scale
        centres[name] = centre
        scales[name] = scale
        candidates.append(name)
    # Time terms first so that, with select_terms=False, the order is time1, time2, ..., others.
    candidates.sort(key=lambda n: (not n.startswith("time"), n if n.startswith("time") else ""))
    transit = None
    if params is not None:
        _check_params(params)
        transit = _Transit(np.where(np.isfinite(t), t, t_ref), params, exptime_s)
    prob = _Problem(
        t=t,
        flux=flux,
        err=np.where(valid, err, 1.0),
        columns=columns,
        centres=centres,
        scales=scales,
        t_ref=t_ref,
        transit=transit,
        params=params if params is not None else TransitParams(0.0, 1.0, 0.1, 10.0, 90.0),
        free=tuple(free) if params is not None else (),
    )
    return prob, valid, candidates, notes


def _run(
    prob: _Problem,
    valid: np.ndarray,
    candidates: list[str],
    notes: list[str],
    select_terms: bool,
    clip_sigma: float,
    profile: bool = True,
) -> FitResult:
    # 1. Most flexible model (every candidate) from the best of several starting points; clip.
    full_terms = list(candidates)
    while full_terms and valid.sum() <= _n_params(prob, full_terms) + 1:
        full_terms.pop()
    _check_enough(prob, [], valid)
    starts = _t0_grid_starts(prob, full_terms, valid)
    full = _fit_with_clipping(prob, full_terms, valid, valid.copy(), starts, clip_sigma)
    mask = full.mask
    selection: list[tuple[list[str], float]] = []
    if select_terms and candidates:
        # 2. Greedy forward BIC selection on that mask, errors rescaled by the full model's fit.
        dof = int(mask.sum()) - _n_params(prob, full_terms)
        inflate = math.sqrt(full.chi2 / dof) if dof > 0 and full.chi2 > 0 else 1.0
        if abs(inflate - 1.0) > 0.1:
            notes.append(
                f"term selection used errors × {inflate:.3f} (sqrt chi2_red of the full model)"
            )
        terms, selection = _select(prob, candidates, mask, full.x, inflate)
    else:
        terms = full_terms
    # 3. Final fit with the chosen terms; clip again against this model.
    starts = [full.x] if prob.free else [np.zeros(0)]
    if prob.free and terms != full_terms:
        starts += _t0_grid_starts(prob, terms, mask)[1:]
    sol = _fit_with_clipping(prob, terms, valid, mask, starts, clip_sigma)
    res = _finish(prob, sol, valid, selection, list(notes))
    if prob.transit is None or not set(prob.free) & {"t0", "rp"}:
        return res
    if not profile:
        res.notes.append("profile-likelihood intervals not computed: errors from the covariance")
        return res
    # 4. Profile-likelihood intervals: the covariance is a parabola at the optimum, which
    # misleads when a parameter is degenerate with the duration or the baseline (shallow or
    # partial transits); the scan also escapes a local minimum the starts missed.
    sol2, intervals = _profiles(prob, sol, res.errors, notes)
    if sol2 is not sol:
        res = _finish(prob, sol2, valid, selection, list(notes))
    if terms != full_terms:
        # The chosen terms are a choice the data made: where a trend and a longer or shifted
        # transit fit about as well, BIC may drop the trend, and the interval of the chosen
        # model alone then misses the truth. When the model with every candidate term puts a
        # parameter outside the chosen model's 1-sigma interval, the estimate depends on the
        # detrending more than on the noise: that parameter's interval spans both models.
        full_sol = _optimise(prob, full_terms, sol2.mask, [sol2.x, full.x])
        at = _x_to_dict(prob, full_sol.x)
        moved = [
            n
            for n in intervals
            if not intervals[n]["1sigma"][0] <= at[n] <= intervals[n]["1sigma"][1]
        ]
        if moved:
            # only the parameters that moved are widened, so only their profiles are scanned
            _, wide = _profiles(prob, full_sol, res.errors, [], tuple(moved))
            intervals = _envelope(intervals, {n: wide[n] for n in moved if n in wide})
            res.notes.append(
                f"{', '.join(moved)} depend(s) on the detrending: the intervals span the fit "
                f"with the chosen terms and with every candidate ({', '.join(full_terms)})"
            )
    _apply_intervals(res, intervals, res.notes)
    flat = _solve_linear(np.ones_like(prob.t), _design(prob, res.terms), prob, res.mask)[1]
    res.detection_sigma = math.sqrt(max(float(flat @ flat) - res.chi2, 0.0))
    if res.detection_sigma < WEAK_DETECTION:
        res.notes.append(
            f"the transit is detected at only {res.detection_sigma:.1f} sigma (Δχ² against no "
            "transit): mid-time, depth and duration are loosely constrained; quote the "
            "profile intervals, not Gaussian errors"
        )
    return res


def fit_transit(
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    params: TransitParams,
    *,
    regressors: Mapping[str, np.ndarray] | None = None,
    free: tuple[str, ...] = ("t0", "rp", "a"),
    baseline_order: int = 1,
    select_terms: bool = True,
    clip_sigma: float = 5.0,
    exptime_s: float | None = None,
    profile: bool = True,
) -> FitResult:
    """Fit transit × baseline to relative flux at times t (BJD_TDB, d); see the module doc.

    ``profile=False`` skips step 4, the profile-likelihood scans (most of the cost of a fit):
    the terms, the selection and the optimum's starting point are the same, the errors come
    from the covariance, and ``intervals`` and ``detection_sigma`` are left empty. For quick
    fits where only the chosen terms or a first estimate are wanted.
    """
    prob, valid, candidates, notes = _prepare(
        t, flux, flux_err, regressors, baseline_order, params, free, exptime_s
    )
    return _run(prob, valid, candidates, notes, select_terms, clip_sigma, profile)


def detrend(
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    regressors: Mapping[str, np.ndarray] | None,
    *,
    select_terms: bool = True,
    baseline_order: int = 1,
    clip_sigma: float = 5.0,
) -> FitResult:
    """Fit a baseline only (no transit) to relative flux at times t (d): c0 and c_<term>."""
    prob, valid, candidates, notes = _prepare(
        t, flux, flux_err, regressors, baseline_order, None, (), None
    )
    return _run(prob, valid, candidates, notes, select_terms, clip_sigma)
