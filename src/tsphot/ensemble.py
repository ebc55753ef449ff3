"""Ensemble differential photometry after Everett & Howell (2001, PASP 113, 1428).

Model. The instrumental magnitude of comparison star i in frame t is

    m[t, i] = a[i] + z[t] + noise,

with a[i] the star's mean magnitude and z[t] the frame's zero point (atmosphere, exposure,
clouds), common to all stars. With one weight w[i] per star the weighted least-squares solution
of this model is

    z[t] = sum_i w[i] (m[t, i] - a[i]) / sum_i w[i]      over stars valid in frame t,
    a[i] = mean_t (m[t, i] - z[t])                        over frames where star i is valid,

i.e. each star is taken relative to its own mean and the frame's offset is the weighted mean of
those deviations, the weights renormalised over the stars present in that frame. Solving the two
equations together (rather than subtracting each star's raw mean once) is what keeps frames with
missing stars from being biased. The system is solved directly, not iterated, and the gauge
(a constant moved between all a and all z) is fixed by sum_i w[i] a[i] = 0, so z[t] is the
ensemble's weighted mean magnitude and ``mag - z`` is the classic "star minus ensemble"
differential magnitude. Adding a constant to every magnitude of a frame changes z[t] by the same
constant and no differential magnitude.

Weights. w[i] = 1 / v[i], v[i] the variance of star i after the ensemble is removed, measured
on its leave-one-out curve m[t, i] - z_(-i)[t] (the ensemble of the *other* stars, so a star
cannot make itself look quiet). That curve's variance is v[i] plus the variance of the others'
ensemble, 1 / sum_(j != i) w[j] for optimal weights, which is subtracted. Weights start from
1 / median(mag_err²) and are iterated until no variance changes by more than ``tol``
(relative); steps in log-variance are halved once they stop shrinking, which damps the
oscillation of a star much quieter than all others. A measured variance is floored at a quarter
of the star's median stated variance (and 1 % of its leave-one-out variance). With exactly two
stars only the sum of their variances is measurable; it is split in the ratio of their stated
errors. In a leave-one-out ensemble the other stars keep their means a[j] from the full solution
(exact when every point is valid) and the gauge is re-fixed over the others, so ``loo_mag`` is
the star minus the others' weighted mean magnitude.

Errors. The offset's own 1-sigma is sqrt(sum_i w[i]² sigma[t, i]²) / sum_i w[i] over stars
valid in frame t, with sigma the per-point (model) errors; a differential magnitude's error is
the star's error ⊕ that.

Rejection. After convergence every used star's leave-one-out curve is tested with its reduced
chi-square about its weighted mean, using the model errors (star ⊕ others' ensemble). The worst
star above the limit is removed and everything is solved again, until no star exceeds the limit
or ``min_stars`` remain. The reason says whether the excess is time-correlated ('variable': the
von Neumann ratio of the normalised residuals, taken in frame order, is more than 3 sigma below
its white-noise value 2, variance 4(n-2)/(n²-1)) or white ('noisy').
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, stats

from tsphot.errors import TsphotError

# Default rejection: false-alarm probability of chi2 with the curve's dof, and a floor on the
# reduced chi-square so that a small excess of a real-world error model does not reject a star.
# The floor binds only on long nights (the 1e-4 limit is 1.48 at 140 points, 1.16 at 1,200):
# there a 1 % sinusoidal variable with 1.2 % noise per point reaches chi2_red 1.4, strongly
# time-correlated: it adds red noise to the target and is dropped above 1.2.
FALSE_ALARM = 1e-4
CHI2_RED_FLOOR = 1.2
# One-sided significance (in sigma) for calling the residuals of a rejected star time-correlated.
VON_NEUMANN_SIGMA = 3.0
# White (uncorrelated) excess noise costs little: the weights already follow each star's real
# variance, so such a star still lowers the ensemble's variance. A star whose excess is white is
# dropped only when it scatters more than twice its expected rms (a blend, bad pixels).
NOISY_CHI2_RED = 4.0
# A measured variance is never taken below these fractions of the leave-one-out variance and of
# the star's median stated variance: keeps a very quiet star from getting an unbounded weight
# when the subtraction of the others' ensemble variance is dominated by sampling noise.
VAR_FLOOR_LOO = 0.01
VAR_FLOOR_MODEL = 0.25


class EnsembleError(TsphotError):
    """The comparison-star data cannot form an ensemble (shapes, names, no usable star)."""


@dataclass
class EnsembleResult:
    """Comparison ensemble: which stars, their weights, the per-frame offsets and diagnostics."""

    names: list[str]
    used: np.ndarray
    weights: np.ndarray
    reasons: list[str]
    offset: np.ndarray
    offset_err: np.ndarray
    n_used_per_frame: np.ndarray
    loo_mag: np.ndarray
    loo_err: np.ndarray
    rms: np.ndarray
    expected: np.ndarray
    chi2_red: np.ndarray
    iterations: int
    von_neumann: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chi2_limit: np.ndarray = field(default_factory=lambda: np.zeros(0))
    converged: bool = True


@dataclass
class _Solution:
    """Internal: one converged ensemble for a fixed set of used stars."""

    w: np.ndarray  # raw weights 1/v (mag^-2), 0 for unused
    a: np.ndarray  # star means (mag), 0 for unused
    offset: np.ndarray
    offset_err: np.ndarray
    n_used: np.ndarray
    loo: np.ndarray
    loo_err: np.ndarray
    iterations: int
    converged: bool


def _solve_means(m0: np.ndarray, ok: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Star means a (mag) of the weighted least-squares model m = a + z, gauge sum w a = 0."""
    n_frames, _ = m0.shape
    wd = np.where(ok, w, 0.0)  # [t, i]
    wt = wd.sum(axis=1)  # [t]
    live = wt > 0
    wd, m0l, okl, wtl = wd[live], m0[live], ok[live], wt[live]
    n_i = okl.sum(axis=0).astype(float)
    # Normal equations after eliminating z: K a = c, K = diag(w n) - sum_t (w d)(w d)^T / W_t.
    g = wd / np.sqrt(wtl)[:, None]
    k_mat = np.diag(w * n_i) - g.T @ g
    mz = (wd * m0l).sum(axis=1) / wtl  # ensemble mean magnitude per frame
    c = w * np.where(okl, m0l - mz[:, None], 0.0).sum(axis=0)
    sel = w > 0
    ks = k_mat[np.ix_(sel, sel)]
    cs = c[sel]
    ws = w[sel]
    # K has the null vector 1 (a constant moved from z to a); adding u u^T with u = w (scaled
    # like K) fixes the gauge sum w a = 0 and makes the matrix positive definite when all stars
    # are linked through shared frames. Otherwise fall back to the minimum-norm least squares.
    u = ws * np.sqrt(n_frames / ws.sum())
    try:
        sol = linalg.cho_solve(linalg.cho_factor(ks + np.outer(u, u)), cs)
        scale = np.abs(ks).max() * max(np.abs(sol).max(), 1.0) + np.abs(cs).max()
        if not np.all(np.isfinite(sol)) or np.abs(ks @ sol - cs).max() > 1e-9 * scale:
            raise linalg.LinAlgError("ill-conditioned")
    except linalg.LinAlgError:
        lhs = np.vstack([ks, u[None, :] * np.sqrt(n_frames / ws.size)])
        sol = np.linalg.lstsq(lhs, np.concatenate([cs, [0.0]]), rcond=None)[0]
    a = np.zeros_like(w)
    a[sel] = sol
    return a


def _ensemble(
    m0: np.ndarray, err: np.ndarray, ok: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Offsets, their errors, counts and every candidate's leave-one-out curve for fixed weights."""
    a = _solve_means(m0, ok, w)
    wd = np.where(ok, w, 0.0)
    dev = np.where(ok, m0 - a, 0.0)
    s_t = (wd * dev).sum(axis=1)
    w_t = wd.sum(axis=1)
    v_t = (wd**2 * np.where(ok, err, 0.0) ** 2).sum(axis=1)
    n_used = (wd > 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(w_t > 0, s_t / np.where(w_t > 0, w_t, 1.0), np.nan)
        offset_err = np.where(w_t > 0, np.sqrt(v_t) / np.where(w_t > 0, w_t, 1.0), np.nan)
        # Leave-one-out: remove star k's own term; for an unused star (w = 0) this is the full
        # ensemble. The others' gauge constant keeps loo_mag = star - (others' mean magnitude).
        den = w_t[:, None] - wd
        den = np.where(den > w_t[:, None] * 1e-12, den, 0.0)
        num = s_t[:, None] - wd * dev
        gauge = -(w * a) / (w.sum() - w)
        z_loo = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan) + gauge[None, :]
        var_loo = np.clip(v_t[:, None] - wd**2 * np.where(ok, err, 0.0) ** 2, 0.0, None)
        ens_err = np.where(den > 0, np.sqrt(var_loo) / np.where(den > 0, den, 1.0), np.nan)
    loo = np.where(ok, m0 - z_loo, np.nan)
    loo_err = np.where(ok, np.hypot(err, ens_err), np.nan)
    return a, offset, offset_err, n_used, loo, loo_err, den


def _weighted_stats(
    loo: np.ndarray, loo_err: np.ndarray, airmass: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column: number of points, rms and expected rms (mag), reduced chi2, von Neumann ratio.

    With ``airmass``, each curve's weighted linear airmass term is removed first: a star whose
    colour differs from the ensemble's drifts with airmass (second-order extinction), which is
    expected, not variability.
    """
    n_cand = loo.shape[1]
    fin = np.isfinite(loo) & np.isfinite(loo_err) & (loo_err > 0)
    if airmass is not None:
        fin &= np.isfinite(airmass)[:, None]
    n = fin.sum(axis=0)
    iv = np.where(fin, 1.0 / np.where(fin, loo_err, 1.0) ** 2, 0.0)
    n_par = 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (iv * np.where(fin, loo, 0.0)).sum(axis=0) / iv.sum(axis=0)
        resid = np.where(fin, loo - mean, 0.0)
        if airmass is not None and np.nanstd(airmass) > 0:
            # weighted least squares of resid on (airmass - its weighted mean), per column
            am = np.where(fin, airmass[:, None], 0.0)
            am_c = np.where(fin, am - (iv * am).sum(axis=0) / iv.sum(axis=0), 0.0)
            slope = (iv * am_c * resid).sum(axis=0) / (iv * am_c**2).sum(axis=0)
            resid = np.where(fin, resid - np.nan_to_num(slope) * am_c, 0.0)
            n_par = 2
        rms = np.sqrt((resid**2).sum(axis=0) / n)
        expected = np.sqrt((np.where(fin, loo_err, 0.0) ** 2).sum(axis=0) / n)
        chi2_red = (resid**2 * iv).sum(axis=0) / (n - n_par)
    rms[n < 2] = np.nan
    expected[n < 1] = np.nan
    chi2_red[n < 2] = np.nan
    vn = np.full(n_cand, np.nan)
    for k in range(n_cand):
        if n[k] < 3:
            continue
        x = resid[fin[:, k], k] * np.sqrt(iv[fin[:, k], k])  # normalised, frames in time order
        x = x - x.mean()
        ss = (x**2).sum()
        if ss > 0:
            vn[k] = (np.diff(x) ** 2).sum() / ss
    return n, rms, expected, chi2_red, vn


def _von_neumann_z(ratio: float, n: int) -> float:
    """Sigma of a von Neumann ratio from its white-noise mean 2 (variance 4(n-2)/(n²-1))."""
    return (ratio - 2.0) / math.sqrt(4.0 * (n - 2) / (n * n - 1.0))


def _converge(
    m0: np.ndarray,
    err: np.ndarray,
    ok: np.ndarray,
    used: np.ndarray,
    model_var: np.ndarray,
    max_iter: int,
    tol: float,
) -> _Solution:
    """Iterate weights <-> offsets for a fixed set of used stars until the weights settle."""
    okd = ok & used[None, :]
    var = np.where(used, model_var, np.inf)
    idx = np.flatnonzero(used)
    # A lone star needs no weight; otherwise iterate from the stated errors.
    converged = idx.size == 1
    iterations = 1 if converged else 0
    step, last_change = 1.0, np.inf
    while not converged and iterations < max_iter:
        iterations += 1
        w = np.where(used, 1.0 / var, 0.0)
        *_, loo, _, den = _ensemble(m0, err, okd, w)
        fin = okd & np.isfinite(loo)
        n = fin.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(fin, loo, 0.0).sum(axis=0) / n
            loo_var = (np.where(fin, loo - mean, 0.0) ** 2).sum(axis=0) / (n - 1)
            # Variance of the others' ensemble is 1 / sum(w_others) for w = 1/v.
            ens_var = np.where(fin, 1.0 / np.where(den > 0, den, 1.0), 0.0).sum(axis=0) / n
        new = np.full_like(var, np.inf)
        if idx.size == 2:
            # Only the sum of the two variances is measurable: split it as the stated errors.
            share = model_var[idx] / model_var[idx].sum()
            new[idx] = loo_var[idx] * share
        else:
            new[idx] = loo_var[idx] - ens_var[idx]
        floor = np.maximum(VAR_FLOOR_LOO * loo_var, VAR_FLOOR_MODEL * model_var)
        new[idx] = np.maximum(new[idx], floor[idx])
        bad = idx[~np.isfinite(new[idx])]
        new[bad] = model_var[bad]
        change = np.max(np.abs(np.log(new[idx] / var[idx])))
        # Full steps while they shrink; halve the step (in log variance) once they do not, which
        # damps the oscillation of a star much quieter than the rest of the ensemble.
        if change >= last_change:
            step = 0.5
        last_change = change
        var[idx] = var[idx] ** (1.0 - step) * new[idx] ** step
        if change < tol:
            var[idx] = new[idx]
            converged = True
    w = np.where(used, 1.0 / var, 0.0)
    a, offset, offset_err, n_used, loo, loo_err, _ = _ensemble(m0, err, okd, w)
    # Unused candidates: their curve against the full ensemble (which does not contain them).
    loo_all = np.where(ok, m0 - offset[:, None], np.nan)
    err_all = np.where(ok, np.hypot(err, offset_err[:, None]), np.nan)
    loo = np.where(used[None, :], loo, loo_all)
    loo_err = np.where(used[None, :], loo_err, err_all)
    return _Solution(w, a, offset, offset_err, n_used, loo, loo_err, iterations, converged)


def _indices(names: list[str], chosen: Sequence[str] | Sequence[int], what: str) -> set[int]:
    out: set[int] = set()
    for c in chosen:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < len(names):
                raise EnsembleError(f"{what}: index {c} is out of range 0..{len(names) - 1}")
            out.add(int(c))
        elif c in names:
            out.add(names.index(c))
        else:
            raise EnsembleError(
                f"{what}: {c!r} is not one of the comparison candidates {names}; "
                "check the spelling in the settings"
            )
    return out


def everett_howell(
    mag: np.ndarray,
    mag_err: np.ndarray,
    valid: np.ndarray,
    names: Sequence[str],
    *,
    pinned_in: Sequence[str] | Sequence[int] = (),
    pinned_out: Sequence[str] | Sequence[int] = (),
    reject: bool = True,
    chi2_limit: float | None = None,
    max_iter: int = 50,
    tol: float = 1e-7,
    min_stars: int = 2,
    min_valid_fraction: float = 0.5,
    variable_chi2_red: float = 0.0,
    airmass: np.ndarray | None = None,
) -> EnsembleResult:
    """Weighted comparison ensemble of N candidates over M frames (mag arrays [frame, star]).

    ``mag`` and ``mag_err`` are instrumental magnitudes and their 1-sigma errors (mag), shape
    (M, N), frames in time order; ``valid`` (M, N) is False where a point must not be used
    (saturated, failed, flagged); NaN or non-positive errors also count as invalid. Stars valid
    in fewer than ``min_valid_fraction`` of the frames are left out (pinned-in stars need only
    two points). ``pinned_in``/``pinned_out`` are names (or column indices) that are always /
    never used. With ``reject``, stars whose leave-one-out reduced chi-square exceeds
    ``chi2_limit`` (default: the 1e-4 false-alarm level of chi2 with the curve's degrees of
    freedom, and at least 1.5) are removed worst first until none does or ``min_stars`` remain.
    With ``airmass`` (M,), the rejection statistics are taken after removing each star's
    linear airmass term (colour-dependent extinction is not variability; the reasons say so).
    A time-correlated (variable) star is dropped only if its reduced chi-square also exceeds
    ``variable_chi2_red`` (0: at the limit itself). See the module docstring for the method.
    """
    m = np.asarray(mag, dtype=float)
    e = np.asarray(mag_err, dtype=float)
    v = np.asarray(valid, dtype=bool)
    names = [str(x) for x in names]
    if m.ndim != 2:
        raise EnsembleError(f"mag must be 2-D [frame, star], got shape {m.shape}")
    if e.shape != m.shape or v.shape != m.shape:
        raise EnsembleError(
            f"mag {m.shape}, mag_err {e.shape} and valid {v.shape} must have the same shape"
        )
    n_frames, n_cand = m.shape
    if len(names) != n_cand:
        raise EnsembleError(f"{len(names)} names for {n_cand} comparison candidates (columns)")
    if len(set(names)) != len(names):
        raise EnsembleError(f"comparison names must be unique, got {names}")
    if max_iter < 1 or min_stars < 1:
        raise EnsembleError("max_iter and min_stars must be >= 1")
    p_in = _indices(names, pinned_in, "pinned_in")
    p_out = _indices(names, pinned_out, "pinned_out")
    both = p_in & p_out
    if both:
        raise EnsembleError(f"{[names[i] for i in sorted(both)]} are both pinned in and out")

    am = None
    if airmass is not None:
        am = np.asarray(airmass, dtype=float)
        if am.shape != (m.shape[0],):
            raise EnsembleError(f"airmass must have one value per frame, got shape {am.shape}")
    ok = v & np.isfinite(m) & np.isfinite(e) & (e > 0)
    m0 = np.where(ok, m, 0.0)
    err = np.where(ok, e, np.nan)
    n_valid = ok.sum(axis=0)
    need = max(3, math.ceil(min_valid_fraction * n_frames))
    reasons = [""] * n_cand
    used = np.zeros(n_cand, bool)
    model_var = np.full(n_cand, np.nan)
    for k in range(n_cand):
        if n_valid[k] > 0:
            model_var[k] = float(np.median(e[ok[:, k], k] ** 2))
        if k in p_out:
            reasons[k] = "pinned out by user"
        elif n_valid[k] < (2 if k in p_in else need):
            reasons[k] = f"valid in only {n_valid[k]} of {n_frames} frames"
            if k in p_in:
                reasons[k] += " (pinned in, but too few points to use)"
        else:
            used[k] = True
    if not used.any():
        raise EnsembleError(
            f"no usable comparison star among {n_cand} candidates over {n_frames} frames: "
            + "; ".join(f"{n}: {r}" for n, r in zip(names, reasons, strict=True))
        )

    total_iter = 0
    while True:
        sol = _converge(m0, err, ok, used, model_var, max_iter, tol)
        total_iter += sol.iterations
        n_pts, rms, expected, chi2_red, vn = _weighted_stats(sol.loo, sol.loo_err, am)
        dof = np.maximum(n_pts - (1 if am is None else 2), 1)
        if chi2_limit is None:
            limit = np.maximum(stats.chi2.isf(FALSE_ALARM, dof) / dof, CHI2_RED_FLOOR)
        else:
            limit = np.full(n_cand, float(chi2_limit))
        if not reject or used.sum() <= min_stars:
            break
        vn_z = np.array(
            [_von_neumann_z(vn[k], int(n_pts[k])) if n_pts[k] > 2 else 0.0 for k in range(n_cand)]
        )
        vn_z = np.nan_to_num(vn_z)
        # time-correlated excess (a variable star) is dropped at the false-alarm limit; white
        # excess only beyond NOISY_CHI2_RED
        excess = (chi2_red > limit) & (
            ((vn_z < -VON_NEUMANN_SIGMA) & (chi2_red > variable_chi2_red))
            | (chi2_red > NOISY_CHI2_RED)
        )
        if chi2_limit is not None:
            excess = chi2_red > limit  # an explicit limit rejects any excess, as asked
        cand = used & ~np.isin(np.arange(n_cand), list(p_in)) & excess
        if not cand.any():
            break
        worst = int(np.flatnonzero(cand)[np.argmax(chi2_red[cand])])
        z = vn_z[worst]
        head = (
            f"leave-one-out rms {rms[worst] * 1e3:.1f} mmag vs {expected[worst] * 1e3:.1f} "
            + ("expected after its airmass term " if am is not None else "expected ")
            + f"(chi2_red {chi2_red[worst]:.2f} > {limit[worst]:.2f}"
        )
        if z < -VON_NEUMANN_SIGMA:
            reasons[worst] = (
                f"variable: {head}; von Neumann ratio {vn[worst]:.2f}, {-z:.1f} sigma below "
                f"the white-noise value 2: time-correlated)"
            )
        else:
            reasons[worst] = (
                f"noisy: {head}; von Neumann ratio {vn[worst]:.2f}, within "
                f"{VON_NEUMANN_SIGMA:.0f} sigma of the white-noise value 2)"
            )
        used[worst] = False

    weights = np.where(used, sol.w, 0.0)
    weights = weights / weights.sum()
    return EnsembleResult(
        names=names,
        used=used.copy(),
        weights=weights,
        reasons=reasons,
        offset=sol.offset,
        offset_err=sol.offset_err,
        n_used_per_frame=sol.n_used,
        loo_mag=sol.loo,
        loo_err=sol.loo_err,
        rms=rms,
        expected=expected,
        chi2_red=chi2_red,
        iterations=total_iter,
        von_neumann=vn,
        chi2_limit=limit,
        converged=sol.converged,
    )


def differential(
    mag: np.ndarray, mag_err: np.ndarray, ens: EnsembleResult
) -> tuple[np.ndarray, np.ndarray]:
    """Differential magnitude and its error (star ⊕ ensemble; mag) of a target or check series.

    ``mag``/``mag_err`` (mag) have shape (M,) or (M, K) with M the ensemble's frame count.
    Returns ``mag - offset`` and ``hypot(mag_err, offset_err)``; NaN where either is undefined.
    For a star that is itself in the ensemble use ``ens.loo_mag`` instead.
    """
    m = np.asarray(mag, dtype=float)
    e = np.asarray(mag_err, dtype=float)
    if m.shape != e.shape or m.shape[0] != ens.offset.shape[0]:
        raise EnsembleError(
            f"mag {m.shape} and mag_err {e.shape} must match and have "
            f"{ens.offset.shape[0]} frames first"
        )
    extra = (slice(None),) + (None,) * (m.ndim - 1)
    return m - ens.offset[extra], np.hypot(e, ens.offset_err[extra])
