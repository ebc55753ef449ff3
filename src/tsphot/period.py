"""Periods across one or several nights: Lomb–Scargle, box least squares and Fourier series.

Three methods, one output (`PeriodResult`):

- ``ls``: the Lomb–Scargle periodogram (astropy ``LombScargle``) of the magnitudes with each
  night's weighted mean removed, and its false-alarm probability (Baluev 2008, astropy's
  ``baluev`` method) over the searched frequency range.
- ``bls``: box least squares (astropy ``BoxLeastSquares``, likelihood objective) of the
  relative flux, each night normalised by its median; for transits and eclipses.
- ``fourier``: the method of the asteroid community (Harris et al. 1989, Icarus 77, 171): at each
  trial period a Fourier series of chosen order plus one zero point per night is fitted by
  weighted linear least squares; the period with the lowest chi-square wins. The zero points are
  fitted together with the period, so nights on different comparison stars join freely.

Period uncertainty (all methods, stated in the result as ``uncertainty_method``): the profile
chi-square of the period — at each trial period every other parameter (zero points, Fourier
coefficients; for BLS depth, duration and phase) is refitted — is followed outwards from its
minimum until it has risen by Δχ² = max(1, χ²_ν) on each side; half the width between the two
crossings is the 1-sigma error of the frequency (Δχ² = 1 for one parameter of interest; times the
reduced chi-square of the best fit when that exceeds 1, which scales the errors up to match the
scatter actually seen). For ``ls`` the profile is that of the joint order-1 fit with per-night
zero points. Correlated noise left in the data makes this error too small; the reduced
chi-square catches only white excess scatter.

Aliases: every local minimum of the profile chi-square whose Δχ² above the best (divided by the
same max(1, χ²_ν)) is below ``alias_threshold`` (default 9, a relative likelihood of 1 %) is a
period the data cannot exclude; they are listed, with the half and double period for the Fourier
method (one or two maxima per rotation cannot be told apart by the chi-square alone).

Asteroids: magnitudes are reduced to unit distances, m − 5 log10(r Δ), and to zero phase angle
with the H, G phase function (Bowell et al. 1989) when r, Δ and the phase angle are given, and
times are corrected for light time (t − Δ/c), so that nights days apart are phased on the
asteroid's own clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy import constants as const
from astropy import units as u

from tsphot.errors import TsphotError

LIGHT_DAYS_PER_AU = float((const.au / const.c).to_value(u.day))  # 0.0057755 d
ALIAS_THRESHOLD = 9.0  # scaled Δχ²: relative likelihood exp(-4.5) ≈ 1 %
MAX_GRID = 400_000  # trial frequencies; more means the range is too wide for the baseline
METHODS = ("ls", "bls", "fourier")


class PeriodError(TsphotError):
    """A period search cannot be made with the data or settings given."""


@dataclass
class Series:
    """Points of one object over one or more nights: time (d), magnitude and error (mag)."""

    t: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    night: np.ndarray  # integer night index per point, 0..n_nights-1
    night_names: list[str] = field(default_factory=list)

    @property
    def n_nights(self) -> int:
        """Number of nights (zero points)."""
        return int(self.night.max()) + 1 if len(self.night) else 0


@dataclass
class Alias:
    """A period the data cannot exclude (or a half/double period, checked on purpose)."""

    period: float  # d
    period_err: float  # d
    delta_chi2: float  # above the best, divided by max(1, chi2_red)
    kind: str = "alias"  # alias | half | double

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: period and error in days and hours, scaled Δχ², relative likelihood."""
        return {
            "kind": self.kind,
            "period_d": self.period,
            "period_h": self.period * 24,
            "period_err_d": self.period_err,
            "period_err_h": self.period_err * 24,
            "delta_chi2_scaled": self.delta_chi2,
            "relative_likelihood": math.exp(-0.5 * min(self.delta_chi2, 1400.0)),
        }


@dataclass
class PeriodResult:
    """What a period search found, with the periodogram it came from."""

    method: str
    period: float  # d
    period_err: float  # d
    epoch: float  # reference time t0 (d) of the phase (BLS: mid-transit time)
    frequency: np.ndarray  # 1/d, ascending
    statistic: np.ndarray  # LS/BLS power or Fourier chi2, per frequency
    statistic_name: str
    chi2: float  # of the best fit
    dof: int
    chi2_red: float
    chi2_constant: float  # zero points only (no variation)
    fap: float | None  # false-alarm probability where the method has one (LS)
    aliases: list[Alias]
    aliases_unresolved: bool
    order: int
    params: dict[str, Any]  # model parameters (zero points, coefficients or box)
    n_points: int
    uncertainty_method: str
    notes: list[str] = field(default_factory=list)

    def model(self, t: np.ndarray, night: np.ndarray | None = None) -> np.ndarray:
        """The best model at times t (d), magnitudes without (or with) the nights' zero points."""
        return model_mag(self, t, night)

    def amplitude(self) -> float:
        """Peak-to-peak amplitude of the model over one cycle (mag)."""
        ph = np.linspace(0.0, 1.0, 1001)
        m = self.model(self.epoch + ph * self.period)
        return float(np.nanmax(m) - np.nanmin(m))


# ----------------------------------------------------------------------------- inputs


def make_series(
    times: Sequence[np.ndarray],
    mags: Sequence[np.ndarray],
    errs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
) -> Series:
    """Join per-night arrays (d, mag, mag) into one Series; drops non-finite points."""
    if not (len(times) == len(mags) == len(errs)) or len(times) == 0:
        raise PeriodError(
            "give times, magnitudes and errors for the same, non-zero number of nights"
        )
    ts, ms, es, ns = [], [], [], []
    kept_names = []
    k = 0
    for i, (t, m, e) in enumerate(zip(times, mags, errs, strict=True)):
        t, m, e = (np.asarray(a, float) for a in (t, m, e))
        ok = np.isfinite(t) & np.isfinite(m) & np.isfinite(e) & (e > 0)
        if not ok.any():
            continue
        ts.append(t[ok])
        ms.append(m[ok])
        es.append(e[ok])
        ns.append(np.full(ok.sum(), k))
        kept_names.append(names[i] if names is not None else f"night{i + 1}")
        k += 1
    if not ts:
        raise PeriodError(
            "no valid points (finite time, magnitude and positive error) in any night"
        )
    t, m, e, n = (np.concatenate(a) for a in (ts, ms, es, ns))
    order = np.argsort(t, kind="stable")
    return Series(t[order], m[order], e[order], n[order].astype(int), kept_names)


def hg_phase_mag(alpha_deg: np.ndarray | float, g: float = 0.15) -> np.ndarray:
    """Phase-angle term of the H, G system (Bowell et al. 1989), mag: m = H + 5 log rΔ + this."""
    a = np.radians(np.abs(np.asarray(alpha_deg, float)))
    tan_half = np.tan(a / 2)
    phi1 = np.exp(-3.33 * tan_half**0.63)
    phi2 = np.exp(-1.87 * tan_half**1.22)
    return -2.5 * np.log10((1 - g) * phi1 + g * phi2)


def asteroid_correct(
    t: np.ndarray,
    mag: np.ndarray,
    r_au: np.ndarray | float,
    delta_au: np.ndarray | float,
    phase_deg: np.ndarray | float | None = None,
    g: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Light-time corrected times (d) and magnitudes reduced to r = Δ = 1 au (and zero phase)."""
    r = np.asarray(r_au, float)
    d = np.asarray(delta_au, float)
    if np.any(~np.isfinite(r)) or np.any(~np.isfinite(d)) or np.any(r <= 0) or np.any(d <= 0):
        raise PeriodError("asteroid distances r and Δ must be positive numbers (au)")
    t_c = np.asarray(t, float) - d * LIGHT_DAYS_PER_AU
    m_c = np.asarray(mag, float) - 5 * np.log10(r * d)
    if phase_deg is not None:
        m_c = m_c - hg_phase_mag(phase_deg, g)
    return t_c, m_c


# ----------------------------------------------------------------------------- grids


def frequency_grid(
    t: np.ndarray, min_period: float, max_period: float, order: int = 1, oversample: float = 10
) -> np.ndarray:
    """Trial frequencies (1/d), evenly spaced at 1/(oversample × order × baseline)."""
    if not (0 < min_period < max_period):
        raise PeriodError(
            f"period range must have 0 < min < max, got min {min_period} d, max {max_period} d"
        )
    baseline = float(np.ptp(t))
    if baseline <= 0:
        raise PeriodError("all points are at the same time: no period can be measured")
    df = 1.0 / (oversample * max(order, 1) * baseline)
    fmin, fmax = 1.0 / max_period, 1.0 / min_period
    n = math.ceil((fmax - fmin) / df) + 1
    if n > MAX_GRID:
        raise PeriodError(
            f"{n} trial periods needed between {min_period * 24:.4g} h and {max_period * 24:.4g} h "
            f"for a {baseline:.3g}-day baseline; narrow the range (--min/--max)"
        )
    return np.linspace(fmin, fmax, max(n, 3))


# ----------------------------------------------------------------------------- Fourier


def _harmonics(t: np.ndarray, freqs: np.ndarray, order: int) -> np.ndarray:
    """cos/sin rows of each harmonic: shape (n_freq, 2 × order, n_points)."""
    ph = 2 * np.pi * freqs[:, None] * t[None, :]
    out = np.empty((len(freqs), 2 * order, len(t)))
    c1, s1 = np.cos(ph), np.sin(ph)
    out[:, 0], out[:, 1] = c1, s1
    for k in range(1, order):  # angle addition: two trig calls for all harmonics
        ck, sk = out[:, 2 * k - 2], out[:, 2 * k - 1]
        out[:, 2 * k] = ck * c1 - sk * s1
        out[:, 2 * k + 1] = sk * c1 + ck * s1
    return out


def _normal_parts(s: Series, t0: float) -> tuple:
    w = 1.0 / s.err**2
    onehot = np.zeros((len(s.t), s.n_nights))
    onehot[np.arange(len(s.t)), s.night] = 1.0
    # centre each night on its weighted mean: the zero points then start near 0 and the
    # normal equations do not lose digits to a large common magnitude
    wn = onehot.T @ w
    mean_n = (onehot.T @ (w * s.mag)) / wn
    y = s.mag - mean_n[s.night]
    return w, onehot, y, s.t - t0, mean_n


def chi2_grid(s: Series, freqs: np.ndarray, order: int, t0: float | None = None) -> np.ndarray:
    """Chi-square of the best Fourier series (order N) + per-night zero points, per frequency."""
    t0 = float(np.average(s.t, weights=1 / s.err**2)) if t0 is None else t0
    w, onehot, y, tt, _ = _normal_parts(s, t0)
    k_n = s.n_nights
    p = k_n + 2 * order
    n = len(tt)
    a_nn = np.diag(onehot.T @ w)
    b_n = onehot.T @ (w * y)
    yy = float(np.sum(w * y * y))
    out = np.empty(len(freqs))
    batch = max(1, int(3_000_000 // max(n * 2 * order, 1)))
    ridge = 1e-12
    for lo in range(0, len(freqs), batch):
        f = np.asarray(freqs[lo : lo + batch], float)
        h = _harmonics(tt, f, order)  # (B, 2N, n)
        hw = h * w[None, None, :]
        a = np.empty((len(f), p, p))
        a[:, :k_n, :k_n] = a_nn
        a_hn = hw @ onehot  # (B, 2N, K)
        a[:, k_n:, :k_n] = a_hn
        a[:, :k_n, k_n:] = np.transpose(a_hn, (0, 2, 1))
        a[:, k_n:, k_n:] = hw @ np.transpose(h, (0, 2, 1))
        b = np.empty((len(f), p))
        b[:, :k_n] = b_n
        b[:, k_n:] = hw @ y
        diag = np.einsum("bii->bi", a)
        a += ridge * np.eye(p)[None] * diag.max(axis=1)[:, None, None]
        try:
            x = np.linalg.solve(a, b[..., None])[..., 0]
        except np.linalg.LinAlgError:
            x = np.stack(
                [np.linalg.lstsq(ai, bi, rcond=None)[0] for ai, bi in zip(a, b, strict=True)]
            )
        out[lo : lo + batch] = yy - np.einsum("bi,bi->b", b, x)
    return np.maximum(out, 0.0)


def fit_fourier(s: Series, freq: float, order: int, t0: float) -> dict[str, Any]:
    """Weighted least-squares Fourier fit at one frequency: zero points, coefficients, chi2."""
    w, onehot, y, tt, mean_n = _normal_parts(s, t0)
    h = _harmonics(tt, np.array([freq]), order)[0].T
    x = np.hstack([onehot, h])
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
    resid = y - x @ coef
    k_n = s.n_nights
    return {
        "zero_points": (coef[:k_n] + mean_n).tolist(),
        "cos": coef[k_n::2].tolist(),
        "sin": coef[k_n + 1 :: 2].tolist(),
        "chi2": float(np.sum(w * resid**2)),
    }


def _fourier_eval(params: dict[str, Any], t: np.ndarray, freq: float, t0: float) -> np.ndarray:
    ph = 2 * np.pi * freq * (np.asarray(t, float) - t0)
    m = np.zeros_like(ph)
    for k, (c, sn) in enumerate(zip(params["cos"], params["sin"], strict=True), start=1):
        m += c * np.cos(k * ph) + sn * np.sin(k * ph)
    return m


def model_mag(res: PeriodResult, t: np.ndarray, night: np.ndarray | None = None) -> np.ndarray:
    """Model magnitude at t (d): variation only, plus the night's zero point when night is given."""
    p = res.params
    if res.method == "bls" and p.get("shape") == "trapezoid":
        shape = trapezoid_shape(t, res.period, res.epoch, p["duration_d"], p["ingress_fraction"])
        m = p["depth_mag"] * shape
    elif res.method == "bls":
        ph = ((np.asarray(t, float) - res.epoch) / res.period + 0.5) % 1.0 - 0.5
        inside = np.abs(ph * res.period) < 0.5 * p["duration_d"]
        flux = np.where(inside, 1.0 - p["depth"], 1.0)
        m = -2.5 * np.log10(np.clip(flux, 1e-6, None))
    else:
        m = _fourier_eval(p, t, 1.0 / res.period, res.epoch)
    if night is not None:
        m = m + np.asarray(p["zero_points"])[np.asarray(night, int)]
    return m


# ----------------------------------------------------------------------------- uncertainty


def _crossings(f: np.ndarray, stat: np.ndarray, i: int, thr: float) -> tuple[float, float, bool]:
    """Frequencies left and right of index i where stat rises through thr (linear interp)."""
    j = i
    while j > 0 and stat[j - 1] < thr:
        j -= 1
    k = i
    while k < len(f) - 1 and stat[k + 1] < thr:
        k += 1
    closed = j > 0 and k < len(f) - 1
    if j > 0:
        lo = f[j - 1] + (thr - stat[j - 1]) * (f[j] - f[j - 1]) / (stat[j] - stat[j - 1])
    else:
        lo = f[0]
    if k < len(f) - 1:
        hi = f[k] + (thr - stat[k]) * (f[k + 1] - f[k]) / (stat[k + 1] - stat[k])
    else:
        hi = f[-1]
    return float(lo), float(hi), closed


def profile_error(
    profile: Any, f0: float, step: float, scale: float, max_widen: int = 6
) -> tuple[float, float, bool]:
    """Refined best frequency and its 1σ error from profile chi2 rising by Δχ² = scale.

    ``profile(freqs)`` returns the profile chi-square; ``step`` is the coarse grid spacing. The
    window is zoomed in (for sharp minima) or widened (for broad ones) until both crossings are
    inside and resolved by at least 20 samples. Returns (f_best, sigma_f, bounded).
    """
    half = 2.0 * step
    best, sigma, bounded = f0, step, False
    widened = 0
    for _ in range(max_widen + 4):
        f = np.linspace(best - half, best + half, 241)
        f = f[f > 0]
        c = profile(f)
        i = int(np.argmin(c))
        # parabola through the three lowest samples for a sub-sample minimum
        if 0 < i < len(f) - 1:
            y0, y1, y2 = c[i - 1], c[i], c[i + 1]
            den = y0 - 2 * y1 + y2
            shift = 0.5 * (y0 - y2) / den if den > 0 else 0.0
            fb = f[i] + shift * (f[1] - f[0])
        else:
            fb = f[i]
        lo, hi, bounded = _crossings(f, c, i, c[i] + scale)
        best = fb
        sigma = 0.5 * (hi - lo)
        width_samples = (hi - lo) / (f[1] - f[0])
        if not bounded:
            if widened >= max_widen:
                break
            widened += 1
            half *= 3.0
            continue
        if width_samples < 20:
            half = max(2.0 * (hi - lo), 1e-12 * best)
            continue
        break
    return float(best), float(sigma), bounded


def _local_minima(stat: np.ndarray) -> np.ndarray:
    idx = np.flatnonzero((stat[1:-1] <= stat[:-2]) & (stat[1:-1] < stat[2:])) + 1
    return idx


# ----------------------------------------------------------------------------- methods


def _check(s: Series, order: int, method: str) -> None:
    if method not in METHODS:
        raise PeriodError(f"method {method!r} is not one of {', '.join(METHODS)}")
    need = s.n_nights + 2 * order + 2
    if len(s.t) < need:
        raise PeriodError(
            f"{len(s.t)} valid points are too few for a {method} fit of order {order} over "
            f"{s.n_nights} night(s) (need at least {need}); lower --order or add nights"
        )


def _scaled_aliases(
    freqs: np.ndarray,
    prof: np.ndarray,
    profile: Any,
    best_f: float,
    scale: float,
    chi2_best: float,
    step: float,
    threshold: float,
    max_aliases: int = 40,
    refine: bool = True,
) -> list[Alias]:
    out: list[Alias] = []
    cand = _local_minima(prof)
    cand = cand[np.argsort(prof[cand])][: 2 * max_aliases + 2]  # the most plausible only
    for i in cand:
        if abs(freqs[i] - best_f) < 1.5 * step:
            continue
        if (prof[i] - chi2_best) / scale > threshold * 1.5 + 5:
            continue  # the coarse grid may sit a little off a minimum; refine only plausible ones
        if refine:
            f_a, sig_a, _ = profile_error(profile, float(freqs[i]), step, scale, max_widen=0)
            c_a = float(profile(np.array([f_a]))[0])
        else:  # the coarse grid's own minimum (its spacing as the error): cheap, a bit pessimistic
            f_a, sig_a, c_a = float(freqs[i]), step, float(prof[i])
        d = (c_a - chi2_best) / scale
        if d < threshold and abs(f_a - best_f) > 2 * step:
            if all(abs(1 / f_a - a.period) > 0.5 * (sig_a / f_a**2) for a in out):
                out.append(Alias(1 / f_a, sig_a / f_a**2, max(d, 0.0)))
        if len(out) >= max_aliases:
            break
    return sorted(out, key=lambda a: a.delta_chi2)


def fourier_period(
    s: Series,
    min_period: float,
    max_period: float,
    order: int = 4,
    oversample: float = 10,
    alias_threshold: float = ALIAS_THRESHOLD,
) -> PeriodResult:
    """Harris et al. (1989) Fourier-series period search, per-night zero points (periods in d)."""
    _check(s, order, "fourier")
    t0 = float(np.average(s.t, weights=1 / s.err**2))
    freqs = frequency_grid(s.t, min_period, max_period, order, oversample)
    c = chi2_grid(s, freqs, order, t0)

    def profile(f: np.ndarray) -> np.ndarray:
        return chi2_grid(s, np.asarray(f, float), order, t0)

    return _finish(s, "fourier", freqs, c, "chi2", c, profile, order, t0, alias_threshold, None)


def _finish(
    s: Series,
    method: str,
    freqs: np.ndarray,
    stat: np.ndarray,
    stat_name: str,
    prof: np.ndarray,
    profile: Any,
    order: int,
    t0: float,
    alias_threshold: float,
    fap: float | None,
    best_index: int | None = None,
) -> PeriodResult:
    step = float(freqs[1] - freqs[0])
    i = int(np.argmin(prof)) if best_index is None else best_index
    n = len(s.t)
    dof = n - (s.n_nights + 2 * order) - 1
    # first pass with scale 1 to locate the minimum, then the honest scale from its chi2
    f1, _, _ = profile_error(profile, float(freqs[i]), step, 1.0)
    chi2_best = float(profile(np.array([f1]))[0])
    chi2_red = chi2_best / max(dof, 1)
    scale = max(1.0, chi2_red)
    f_best, sig_f, bounded = profile_error(profile, f1, step, scale)
    chi2_best = float(profile(np.array([f_best]))[0])
    chi2_red = chi2_best / max(dof, 1)
    params = fit_fourier(s, f_best, order, t0)
    w, _, y, _, _ = _normal_parts(s, t0)
    chi2_const = float(np.sum(w * y**2))
    notes = []
    if not bounded:
        notes.append(
            "the profile chi-square does not rise by the 1-sigma step on both sides within the "
            "search: the period is not constrained by these data; the error is a lower limit"
        )
    aliases = _scaled_aliases(
        freqs,
        prof,
        profile,
        f_best,
        scale,
        chi2_best,
        step,
        alias_threshold,
        refine=method != "bls",
    )
    if True:  # half and double periods are checked by every method
        for kind, fac in (("double", 0.5), ("half", 2.0)):
            # the lowest chi2 within one grid step of the exact half/double frequency
            f_w = f_best * fac + np.linspace(-1, 1, 41) * step * fac
            c_w = profile(f_w)
            f_h, c_h = float(f_w[np.argmin(c_w)]), float(c_w.min())
            sig_h = sig_f * fac
            hit = Alias(1 / f_h, sig_h / f_h**2, max((c_h - chi2_best) / scale, 0.0), kind)
            same = [
                a for a in aliases if abs(a.period - hit.period) < 3 * max(hit.period_err, 1e-12)
            ]
            for a in same:
                aliases.remove(a)
            aliases.append(hit)
        aliases.sort(key=lambda a: a.delta_chi2)
    close = [a for a in aliases if a.delta_chi2 < alias_threshold]
    unresolved = bool(close)
    if unresolved:
        kinds = sorted({a.kind for a in close})
        notes.append(
            "the data cannot separate aliases: other periods ("
            + ", ".join(f"{a.period * 24:.4f} h [{a.kind}]" for a in close[:6])
            + f") fit within a scaled Δχ² of {alias_threshold:g} of the best"
            + (
                "; half/double: one or two maxima per cycle cannot be told apart by the fit "
                "alone (a large amplitude favours two)"
                if set(kinds) & {"half", "double"}
                else ""
            )
        )
    return PeriodResult(
        method=method,
        period=1 / f_best,
        period_err=sig_f / f_best**2,
        epoch=t0,
        frequency=freqs,
        statistic=stat,
        statistic_name=stat_name,
        chi2=chi2_best,
        dof=int(dof),
        chi2_red=float(chi2_red),
        chi2_constant=chi2_const,
        fap=fap,
        aliases=aliases,
        aliases_unresolved=unresolved,
        order=order,
        params=params,
        n_points=n,
        uncertainty_method=(
            "profile chi-square: half-width where chi2 rises by max(1, chi2_red) = "
            f"{scale:.3g} above its minimum (all other parameters refitted at each period)"
        ),
        notes=notes,
    )


def ls_period(
    s: Series,
    min_period: float,
    max_period: float,
    oversample: float = 10,
    alias_threshold: float = ALIAS_THRESHOLD,
) -> PeriodResult:
    """Lomb–Scargle period (astropy) with its false-alarm probability; error from the joint fit."""
    from astropy.timeseries import LombScargle

    _check(s, 1, "ls")
    t0 = float(np.average(s.t, weights=1 / s.err**2))
    freqs = frequency_grid(s.t, min_period, max_period, 1, oversample)
    _, _, y, _, _ = _normal_parts(s, t0)  # each night's weighted mean removed
    ls = LombScargle(s.t, y, s.err)
    power = np.asarray(ls.power(freqs, method="cython"), float)
    fap = float(
        ls.false_alarm_probability(
            power.max(),
            method="baluev",
            minimum_frequency=freqs[0],
            maximum_frequency=freqs[-1],
        )
    )

    def profile(f: np.ndarray) -> np.ndarray:
        return chi2_grid(s, np.asarray(f, float), 1, t0)

    prof = profile(freqs)
    res = _finish(
        s,
        "ls",
        freqs,
        power,
        "ls_power",
        prof,
        profile,
        1,
        t0,
        alias_threshold,
        fap,
        best_index=int(np.argmax(power)),
    )
    if s.n_nights > 1:
        res.notes.append(
            "periodogram of magnitudes minus each night's mean; period and error from the joint "
            "sinusoid fit with per-night zero points"
        )
    return res


def _night_flux(s: Series) -> tuple[np.ndarray, np.ndarray]:
    """Relative flux of each point, each night normalised by its median, and its error."""
    med = np.array([np.median(s.mag[s.night == k]) for k in range(s.n_nights)])
    flux = 10 ** (-0.4 * (s.mag - med[s.night]))
    return flux, flux * 0.4 * np.log(10) * s.err


def bls_period(
    s: Series,
    min_period: float,
    max_period: float,
    durations: Sequence[float] | None = None,
    oversample: int = 3,
    alias_threshold: float = ALIAS_THRESHOLD,
) -> PeriodResult:
    """Box least squares period (astropy) for transits and eclipses; durations in d."""
    from astropy.timeseries import BoxLeastSquares

    _check(s, 1, "bls")
    flux, ferr = _night_flux(s)
    bls = BoxLeastSquares(s.t, flux, ferr)
    if durations is None:
        cad = float(np.median(np.diff(np.unique(s.t)))) if len(s.t) > 2 else min_period / 50
        # shorter boxes than three cadences or 1 % of the period are not resolved by the data
        lo = max(3 * cad, 0.01 * min_period)
        # eclipses last up to ~15 % of the period; astropy needs every box shorter than the
        # shortest trial period, so half of it caps the longest box
        hi = min(0.15 * max_period, 0.5 * min_period)
        if lo >= hi:
            raise PeriodError(
                f"cadence {cad * 1440:.2g} min is too coarse for periods down to "
                f"{min_period * 24:.3g} h with BLS; raise --min"
            )
        durations = np.geomspace(lo, hi, 8)
    durations = np.asarray(durations, float)
    if durations.max() >= min_period:
        raise PeriodError("BLS durations must be shorter than the shortest trial period (--min)")
    baseline = float(np.ptp(s.t))
    # a frequency step that moves the last transit by a third of the shortest box
    df = durations.min() / (3 * baseline * max_period)
    fmin, fmax = 1 / max_period, 1 / min_period
    n = math.ceil((fmax - fmin) / df) + 1
    if n > MAX_GRID:
        raise PeriodError(f"BLS would need {n} trial periods; narrow the range (--min/--max)")
    freqs = np.linspace(fmin, fmax, max(n, 3))
    pg = bls.power(1 / freqs, durations, objective="likelihood", oversample=oversample)
    power = np.asarray(pg.power, float)
    w = 1 / ferr**2
    ybar = np.sum(w * flux) / np.sum(w)
    chi2_const = float(np.sum(w * (flux - ybar) ** 2))
    prof = chi2_const - 2 * power

    def profile(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, float)
        p = bls.power(1 / f, durations, objective="likelihood", oversample=max(oversample, 20))
        return chi2_const - 2 * np.asarray(p.power, float)

    res = _finish(
        s, "bls", freqs, power, "bls_log_likelihood", prof, profile, 1, 0.0, alias_threshold, None
    )
    # replace the Fourier parameters by the box at the refined period
    p = bls.power(
        np.array([res.period]), durations, objective="likelihood", oversample=max(oversample, 20)
    )
    stats = {
        "depth": float(p.depth[0]),
        "depth_err": float(p.depth_err[0]),
        "duration_d": float(p.duration[0]),
        "transit_time": float(p.transit_time[0]),
        "depth_snr": float(p.depth_snr[0]),
    }
    med = np.array([np.median(s.mag[s.night == k]) for k in range(s.n_nights)])
    stats["zero_points"] = med.tolist()
    res.params = {"shape": "box", **stats}
    res.epoch = stats["transit_time"]
    res.notes.append("each night normalised by its median flux before the box search")
    _refine_trapezoid(s, res, float(freqs[1] - freqs[0]))
    return res


def trapezoid_shape(
    t: np.ndarray, period: float, t_mid: float, width: float, ingress: float
) -> np.ndarray:
    """Eclipse shape 0..1: flat bottom, linear ingress/egress (fraction of width), 0 outside."""
    dt = np.abs(((np.asarray(t, float) - t_mid) / period + 0.5) % 1.0 - 0.5) * period
    half = 0.5 * width
    ramp = max(ingress * width, 1e-9)
    return np.clip((half - dt) / ramp, 0.0, 1.0)


def _trapezoid_chi2(
    s: Series, periods: np.ndarray, mids: np.ndarray, width: float, ingress: float
) -> tuple[np.ndarray, np.ndarray]:
    """Chi2 and depth of trapezoids (fixed width/ingress) on a period × mid-time grid.

    Depth and the per-night zero points are linear: they are solved in closed form for every
    grid node at once (depth ≥ 0; a negative best depth means no eclipse, chi2 of zero points).
    """
    w = 1.0 / s.err**2
    onehot = np.zeros((len(s.t), s.n_nights))
    onehot[np.arange(len(s.t)), s.night] = 1.0
    wk = onehot.T @ w  # (K,)
    yk = onehot.T @ (w * s.mag)
    chi0 = float(np.sum(w * s.mag**2) - np.sum(yk**2 / wk))
    dt = s.t[None, None, :] - mids[None, :, None]
    ph = np.abs((dt / periods[:, None, None] + 0.5) % 1.0 - 0.5) * periods[:, None, None]
    h = np.clip((0.5 * width - ph) / max(ingress * width, 1e-9), 0.0, 1.0)  # (P, T, n)
    hk = h @ (onehot * w[:, None])  # (P, T, K)
    hy = h @ (w * s.mag)
    hh = (h * h) @ w
    num = hy - (hk * (yk / wk)).sum(axis=-1)
    den = hh - (hk**2 / wk).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    depth = np.clip(depth, 0.0, None)
    return chi0 - depth * num * (den > 0), depth


def _full_profile(
    s: Series,
    resid_at: Any,
    p_best: float,
    v_best: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    step: float,
    scale: float,
    max_steps: int = 24,
    alias_threshold: float = ALIAS_THRESHOLD,
) -> tuple[float, float, list[tuple[float, float]]] | None:
    """The profile chi-square in period, every other trapezoid parameter refitted, walked out
    from p_best with warm starts: the periods where it first rises by ``scale`` on each side,
    and the further local minima within ``alias_threshold`` (scaled) of the best, as
    (period, scaled Δχ²). None if a fit fails."""
    from scipy.optimize import least_squares

    def chi_at(period: float, v0: np.ndarray) -> tuple[float, np.ndarray]:
        best = None
        w = v_best[1]
        starts = [v0, np.array([v0[0], v0[1], v_best[2]])]  # the ingress has local minima,
        for dt, fw in ((-0.05, 0.9), (0.05, 0.9), (-0.05, 1.1), (0.05, 1.1)):  # and the edges
            starts.append(np.array([v0[0] + dt * w, v0[1] * fw, v0[2]]))
        for start in starts:
            f = least_squares(resid_at, np.clip(start, lo, hi), args=(period,), bounds=(lo, hi))
            if best is None or f.cost < best.cost:
                best = f
        return 2.0 * float(best.cost), best.x

    try:
        c0, _ = chi_at(p_best, v_best)
        ends, minima = [], []
        for sign in (-1.0, 1.0):
            v, prev_p, prev_c, end = v_best.copy(), p_best, c0, None
            walk = []
            for k in range(1, max_steps + 1):
                period = p_best + sign * k * step
                c, v = chi_at(period, v)
                walk.append((period, c))
                if end is None and c - c0 >= scale:
                    end = prev_p + (period - prev_p) * (c0 + scale - prev_c) / (c - prev_c)
                if c - c0 > (alias_threshold + 4.0) * scale:
                    break  # no alias can lie beyond a rise this high within the walk
                prev_p, prev_c = period, max(c, c0)
            ends.append(end if end is not None else p_best + sign * max_steps * step)
            cs = [c0] + [c for _, c in walk]
            for i in range(1, len(walk) - 1):  # dips after the first crossing: aliases
                past = end is not None and abs(walk[i][0] - p_best) > abs(end - p_best)
                if past and cs[i + 1] < cs[i] and walk[i][1] < walk[i + 1][1]:
                    d = (walk[i][1] - c0) / scale
                    if d < alias_threshold:
                        minima.append((walk[i][0], max(d, 0.0)))
    except (ValueError, np.linalg.LinAlgError):
        return None
    return ends[0], ends[1], minima


def _refine_trapezoid(s: Series, res: PeriodResult, step_f: float) -> None:
    """Refit the BLS box as a trapezoid with free period and per-night zero points.

    A box has no ingress, so its chi-square jumps as points cross its edges. The trapezoid
    (flat bottom, linear ingress and egress) is continuous in its parameters; depth and zero
    points are linear and solved exactly (variable projection). The period's error is read
    from the profile chi-square in period (mid-time refitted, width and ingress held at their
    best values): the hull of periods within Δχ² = max(1, χ²_ν) of the minimum. With few points
    in eclipse that profile is ragged and the curvature at the minimum alone would claim far
    too small an error; the hull does not.
    """
    from scipy.optimize import least_squares

    box = res.params
    p0, w0 = res.period, box["duration_d"]
    k_n = s.n_nights
    onehot = np.zeros((len(s.t), k_n))
    onehot[np.arange(len(s.t)), s.night] = 1.0
    iw = 1.0 / s.err

    # The zero points are partialled out in closed form (Frisch-Waugh-Lovell): with each
    # night's weighted mean taken from the magnitudes and from the shape, the depth is a
    # one-column weighted regression. The residuals equal those of the least-squares fit of
    # [zero points, depth] (unique even where the shape is constant within every night), at a
    # fraction of the cost of a full solve per evaluation (the profile walk makes thousands).
    w = iw**2
    wk = np.bincount(s.night, w, k_n)
    wk = np.where(wk > 0, wk, 1.0)
    mc = s.mag - (np.bincount(s.night, w * s.mag, k_n) / wk)[s.night]

    def resid(q: np.ndarray) -> np.ndarray:
        h = trapezoid_shape(s.t, q[0], q[1], q[2], q[3])
        hc = h - (np.bincount(s.night, w * h, k_n) / wk)[s.night]
        whc = w * hc
        den = float(whc @ hc)
        depth = float(whc @ mc) / den if den > 1e-12 * float(w @ (h * h)) else 0.0
        return (mc - depth * hc) * iw

    def resid_at(v: np.ndarray, period: float) -> np.ndarray:
        return resid(np.concatenate([[period], v]))

    # the mid-time nearest the middle of the data: there period and mid-time are uncorrelated
    t_mean = float(np.average(s.t, weights=iw**2))
    tc0 = box["transit_time"] + np.round((t_mean - box["transit_time"]) / p0) * p0
    q0 = np.array([p0, tc0, w0, 0.3])
    lo = np.array([p0 * 0.99, tc0 - 0.5 * w0, 0.2 * w0, 0.02])
    hi = np.array([p0 * 1.01, tc0 + 0.5 * w0, min(3 * w0, 0.45 * p0), 0.5])
    try:
        fits = []
        for r0 in (0.1, 0.3, 0.5):  # the chi-square in the ingress has local minima
            q0[3] = r0
            fits.append(least_squares(resid, np.clip(q0, lo, hi), bounds=(lo, hi), x_scale="jac"))
        q = min(fits, key=lambda f: f.cost).x
    except (ValueError, np.linalg.LinAlgError) as exc:
        res.notes.append(f"trapezoid refinement failed ({exc}); period error from the box profile")
        return
    width, ingress = float(q[2]), float(q[3])
    dof = len(s.t) - (4 + k_n + 1)
    n_cyc = max(float(np.ptp(s.t)) / q[0], 1.0)
    half_p = max(3.0 * res.period_err, 0.05 * width / n_cyc, 1e-7 * q[0])
    half_t = 0.5 * width
    p_c, t_c = float(q[0]), float(q[1])
    for _ in range(6):
        periods = p_c + np.linspace(-half_p, half_p, 61)
        mids = t_c + np.linspace(-half_t, half_t, 41)
        chi, _ = _trapezoid_chi2(s, periods, mids, width, ingress)
        prof = chi.min(axis=1)
        i_min = int(np.argmin(prof))
        scale = max(1.0, float(prof[i_min]) / max(dof, 1))
        inside = np.flatnonzero(prof <= prof[i_min] + scale)
        j_t = int(np.argmin(chi[i_min]))
        p_c, t_c = float(periods[i_min]), float(mids[j_t])
        if inside[0] == 0 or inside[-1] == periods.size - 1:
            half_p *= 2.5  # the hull reaches the window edge: widen
            continue
        if inside[-1] - inside[0] < 8:
            half_p = max(0.75 * (inside[-1] - inside[0] + 2) * (periods[1] - periods[0]), 1e-9)
            half_t = max(4 * (mids[1] - mids[0]), 1e-6)
            continue
        break
    thr = prof[i_min] + scale
    j, k = inside[0], inside[-1]
    p_lo = periods[j] if j == 0 else np.interp(thr, prof[[j, j - 1]], periods[[j, j - 1]])
    p_hi = (
        periods[k]
        if k == periods.size - 1
        else np.interp(thr, prof[[k, k + 1]], periods[[k, k + 1]])
    )
    if j == 0 or k == periods.size - 1:
        res.notes.append("the trapezoid profile does not close within its window: error too small")
    # The grid above held width and ingress: a transit seen only in ingress or egress times
    # its middle by its width, so the full profile (mid-time, width and ingress refitted at
    # each period) is wider. Walk it outwards from the best period with warm starts.
    full = _full_profile(s, resid_at, p_c, np.array([t_c, width, ingress]), lo[1:], hi[1:],
                         max(0.25 * (p_hi - p_lo), 1e-9), scale)  # fmt: skip
    if full is not None:
        p_lo, p_hi = min(p_lo, full[0]), max(p_hi, full[1])
        step = max(0.25 * (p_hi - p_lo), 1e-9)
        for p_a, d_a in full[2]:
            if all(abs(a.period - p_a) > step for a in res.aliases):
                res.aliases.append(Alias(p_a, step, d_a))
        if full[2]:
            res.aliases.sort(key=lambda a: a.delta_chi2)
            res.aliases_unresolved = True
            res.notes.append(
                "the trapezoid's profile has other minima within a scaled Δχ² of "
                f"{ALIAS_THRESHOLD:g}: " + ", ".join(f"{p_a:.6g} d" for p_a, _ in full[2])
            )
    q_best = np.array([p_c, t_c, width, ingress])
    h = trapezoid_shape(s.t, *q_best)
    x_lin = np.hstack([onehot, h[:, None]])
    coef = np.linalg.lstsq(x_lin * iw[:, None], s.mag * iw, rcond=None)[0]
    depth = float(coef[-1])
    if depth <= 0:
        res.notes.append("trapezoid refinement found no eclipse; period error from the box profile")
        return
    chi2 = float(np.sum(((s.mag - x_lin @ coef) * iw) ** 2))
    cov = np.linalg.pinv((x_lin * iw[:, None]).T @ (x_lin * iw[:, None]))
    res.params = {
        "shape": "trapezoid",
        "depth_mag": depth,
        "depth_mag_err": float(np.sqrt(max(cov[-1, -1], 0.0) * scale)),
        "duration_d": width,
        "ingress_fraction": ingress,
        "transit_time": t_c,
        "zero_points": coef[:-1].tolist(),
        "bls_box": {k_: v for k_, v in box.items() if k_ not in ("zero_points", "shape")},
    }
    res.period = p_c
    res.period_err = float(0.5 * (p_hi - p_lo))
    res.epoch = t_c
    res.chi2 = chi2
    res.dof = int(dof)
    res.chi2_red = chi2 / max(dof, 1)
    res.uncertainty_method = (
        "BLS locates the period; a trapezoid (depth, duration, ingress, mid-time, per-night zero "
        "points) refines it; error = half the span of periods whose profile chi-square (mid-time "
        f"refitted) is within Δχ² = max(1, chi2_red) = {scale:.3g} of the minimum"
    )


def find_period(
    s: Series,
    method: str,
    min_period: float,
    max_period: float,
    order: int = 4,
    alias_threshold: float = ALIAS_THRESHOLD,
) -> PeriodResult:
    """Dispatch to the chosen method (ls | bls | fourier); periods in days."""
    if method == "fourier":
        return fourier_period(s, min_period, max_period, order, alias_threshold=alias_threshold)
    if method == "ls":
        return ls_period(s, min_period, max_period, alias_threshold=alias_threshold)
    if method == "bls":
        return bls_period(s, min_period, max_period, alias_threshold=alias_threshold)
    raise PeriodError(f"method {method!r} is not one of {', '.join(METHODS)}")


def phase_fold(t: np.ndarray, period: float, epoch: float) -> np.ndarray:
    """Phase in [0, 1) of times t (d) for a period and epoch (d)."""
    return ((np.asarray(t, float) - epoch) / period) % 1.0


def parse_period(text: str) -> float:
    """A period like '3.5h', '90m', '2d', '45s' or a bare number (hours) → days."""
    s = str(text).strip().lower()
    units = {"d": 1.0, "h": 1 / 24, "min": 1 / 1440, "m": 1 / 1440, "s": 1 / 86400}
    num, fac = s, 1 / 24
    for suf, f in units.items():
        if s.endswith(suf):
            num, fac = s[: -len(suf)], f
            break
    try:
        val = float(num)
    except ValueError:
        raise PeriodError(
            f"period {text!r} is not a number with an optional unit (d, h, m, s); e.g. 3.5h"
        ) from None
    if not val > 0:
        raise PeriodError(f"period {text!r} must be positive")
    return val * fac
