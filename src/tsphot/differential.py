"""Differential photometry: the reduce step from measured fluxes to calibrated light curves."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsphot import ensemble, ingest, noise, timing
from tsphot.ingest import FrameInfo
from tsphot.settings import Settings

log = logging.getLogger("tsphot")

MAG_ZERO_POINT = 25.0  # instrumental magnitude: -2.5 log10(e-/s) + 25
# Telescope apertures of profiles whose headers do not say it (m).
PROFILE_APERTURE_M = {"microobservatory": 0.152}


@dataclass
class Curve:
    """A differential light curve of one object, per frame."""

    name: str
    role: str
    diff_mag: np.ndarray
    diff_mag_err: np.ndarray
    rel_flux: np.ndarray
    rel_flux_err: np.ndarray
    valid: np.ndarray
    bjd_tdb: np.ndarray
    outlier: np.ndarray | None = None  # points flagged as outliers (not in valid)
    rms: float = float("nan")  # of rel_flux over valid points
    median_err: float = float("nan")
    fit: Any = None  # fit.FitResult when a transit or detrending fit was made
    std_mag: np.ndarray | None = None  # on the catalogue scale of a nominated comparison star


@dataclass
class Reduced:
    """Everything the reduce step produced."""

    radius_index: int
    radius: float
    scatter_by_radius: dict[float, float]
    jd_utc: np.ndarray
    airmass: np.ndarray
    airmass_source: str
    exptime: np.ndarray
    frame_ok: np.ndarray
    flux: np.ndarray  # [frame, obj] e- at the chosen radius
    flux_err: np.ndarray  # CCD equation only
    mag: np.ndarray
    mag_err: np.ndarray  # CCD ⊕ scintillation
    valid: np.ndarray  # [frame, obj]
    scint: np.ndarray  # fractional scintillation sigma per frame
    transparency: np.ndarray  # ensemble flux relative to the night's median, per frame
    cloudy: np.ndarray  # frames left out for thick cloud (transparency < min_transparency)
    ensemble: ensemble.EnsembleResult
    comp_index: np.ndarray  # object indices of the comparison candidates
    curves: dict[str, Curve] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    # per object: fractional 1-sigma of each noise term per frame, and the summary
    terms: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    mag_scale: dict[str, Any] | None = None  # the comparison star giving the catalogue scale
    object_names: list[str] = field(default_factory=list)  # plan order, as in the flux columns
    # per frame: quality flags ("thin_cloud", "cloud", "bright_sky"; "" when clean), why, and
    # the frames left out for an extremely bright sky (> max_sky_ratio × the night's median)
    quality: list[str] = field(default_factory=list)
    quality_reason: list[str] = field(default_factory=list)
    bright_sky: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # background variance (e²) the CCD equation misses, measured on empty-sky apertures at the
    # chosen radius and added to every star's error (0 when not significant)
    excess_var: float = 0.0


def _stack(results: list, key: str, n_obj: int, n_r: int | None = None) -> np.ndarray:
    shape = (len(results), n_obj) if n_r is None else (len(results), n_obj, n_r)
    out = np.full(shape, np.nan)
    for i, r in enumerate(results):
        out[i] = r.columns[key]
    return out


def _site_and_coords(settings: Settings, frames: list[FrameInfo], plan: Any, notes: dict) -> tuple:
    """Site (EarthLocation) and per-object sky coordinates, from settings, WCS or headers."""

    ok = [f for f in frames if f.status == "ok"]
    site = None
    if settings.site is not None:
        site = timing.parse_site(*settings.site)
        notes["site_source"] = "settings"
    elif ok and ok[0].site is not None:
        site = timing.parse_site(*ok[0].site)
        notes["site_source"] = f"header ({ok[0].profile} profile)"
    else:
        notes["site_source"] = "none: no site in the headers and none given (--site LAT,LON,ELEV)"
    coords: dict[str, Any] = {}
    header = notes.get("reference_header")
    wcs = ingest.quiet_wcs(header) if header is not None else None
    specs = {s.name: s for s in [*settings.targets, *settings.comps, *settings.checks]}
    pointing = ok[0].ra_dec if ok else None
    sources = {}
    for o in plan.objects:
        spec = specs.get(o.name)
        if spec is not None and spec.ra is not None:
            coords[o.name] = timing.parse_coord(spec.ra, spec.dec)
            sources[o.name] = "given"
        elif wcs is not None:
            coords[o.name] = wcs.pixel_to_world(o.x, o.y)
            sources[o.name] = "reference-frame WCS"
        elif pointing is not None:
            coords[o.name] = timing.parse_coord(pointing[0], pointing[1])
            sources[o.name] = "header pointing (RA/DEC), not the object itself"
    notes["coord_source"] = {
        k: v for k, v in sources.items() if k in {o.name for o in plan.objects if o.role != "comp"}
    }
    return site, coords


def _robust_p2p(x: np.ndarray) -> float:
    """Point-to-point scatter, insensitive to slow trends, transits and a few outliers.

    The standard deviation of successive differences over sqrt(2), after clipping differences
    beyond 4 sigma (sigma first from their MAD): nearly as efficient as a plain standard
    deviation (the MAD alone wastes 63 % of the frames, so it picks radii by noise).
    """
    x = x[np.isfinite(x)]
    if len(x) < 5:
        return np.inf
    d = np.diff(x)
    d = d - np.median(d)
    sig = 1.4826 * np.median(np.abs(d))
    for _ in range(5):
        keep = np.abs(d) <= 4.0 * sig
        if keep.sum() < 3:
            break
        new = float(np.std(d[keep]))
        if new == sig:
            break
        sig = new
    return float(sig / np.sqrt(2))


def flag_outliers(
    y: np.ndarray,
    err: np.ndarray,
    valid: np.ndarray,
    sigma: float,
    half: int = 3,
    t: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points further than sigma × their error from what their 2×half neighbours predict.

    Returns the flags and each point's deviation in sigma. With times t, a point with two or
    more neighbours on each side is compared with a quadratic through them (one refit after
    dropping a neighbour beyond 4 sigma), and a point at an end of the night with a line
    through its neighbours: these follow curved light curves (an asteroid's rotation maximum,
    a transit's ingress) whose peaks a running median would cut off. Without t, the median of
    the neighbours. Only isolated jumps (cosmic rays, satellites) are flagged.
    """
    idx = np.nonzero(valid)[0]
    dev = np.full(len(y), np.nan)
    for k, i in enumerate(idx):
        left, right = idx[max(k - half, 0) : k], idx[k + 1 : k + 1 + half]
        nb = np.concatenate([left, right])
        if len(nb) < 2:
            continue
        if t is not None and len(nb) >= 3 and np.isfinite(t[nb]).all():
            # at the ends of the night a line through one side's neighbours, not a median
            # (which lags a slope); a quadratic where there are neighbours on both sides
            deg = 2 if len(left) >= 2 and len(right) >= 2 else 1
            pred, e_pred = _poly_at(t[nb] - t[i], y[nb], err[nb], deg)
            if np.isfinite(pred):
                dev[i] = (y[i] - pred) / np.hypot(err[i], e_pred)
                continue
        med = np.median(y[nb])
        # error of a median of n points ≈ sqrt(π/2) × the error of their mean
        e_med = np.sqrt(np.pi / 2) * np.sqrt(np.mean(err[nb] ** 2) / len(nb))
        dev[i] = (y[i] - med) / np.hypot(err[i], e_med)
    return np.abs(np.nan_to_num(dev)) > sigma, dev


def frame_quality(
    transparency: np.ndarray,
    sky_rate: np.ndarray,
    jd: np.ndarray,
    frame_ok: np.ndarray,
    min_transparency: float,
    thin_cloud: float,
    max_sky_ratio: float,
) -> tuple[list[str], list[str], np.ndarray]:
    """Flags ("clear" if none) and reasons per frame for cloud and bright sky, and the frames
    too bright to use.

    cloud: transparency (comparison flux relative to the night's median) below
    min_transparency, left out; thin_cloud: below thin_cloud, kept. bright_sky: sky (ADU/s)
    more than 1.5 times the median of the four frames nearest in time, or twice the night's
    median (moonlit cloud, a flashlight, twilight); left out above max_sky_ratio × the median.
    """
    n = len(transparency)
    flags: list[list[str]] = [[] for _ in range(n)]
    why: list[list[str]] = [[] for _ in range(n)]
    ok = frame_ok & np.isfinite(sky_rate)
    med_sky = float(np.median(sky_rate[ok])) if ok.any() else np.nan
    idx = np.flatnonzero(ok)
    too_bright = np.zeros(n, bool)
    for i in range(n):
        tr = transparency[i]
        if np.isfinite(tr) and tr < min_transparency:
            flags[i].append("cloud")
            why[i].append(f"comparison stars at {tr:.2f} of the night's median flux (cloud)")
        elif np.isfinite(tr) and tr < thin_cloud:
            flags[i].append("thin_cloud")
            why[i].append(f"comparison stars at {tr:.2f} of the night's median flux (thin cloud)")
        # a frame that could not be registered still has its sky measured: flag it too
        if not np.isfinite(sky_rate[i]) or not np.isfinite(med_sky) or med_sky <= 0:
            continue
        others = idx[idx != i]
        near = others[np.argsort(np.abs(jd[others] - jd[i]), kind="stable")[:4]]
        local = float(np.median(sky_rate[near])) if len(near) else med_sky
        r_night, r_local = sky_rate[i] / med_sky, sky_rate[i] / local if local > 0 else 1.0
        if r_night > 2.0 or r_local > 1.5:
            flags[i].append("bright_sky")
            why[i].append(
                f"sky {r_local:.1f}x that of the frames around it, "
                f"{r_night:.1f}x the night's median"
            )
            too_bright[i] = r_night > max_sky_ratio
    # "clear" rather than an empty string: empty text cells do not survive CSV round trips
    return (
        [",".join(f) or "clear" for f in flags],
        ["; ".join(w) or "no cloud or bright sky seen" for w in why],
        too_bright,
    )


def _poly_at(dt: np.ndarray, y: np.ndarray, err: np.ndarray, deg: int) -> tuple[float, float]:
    """Value at dt = 0 of a weighted polynomial through (dt, y), and its error; NaN if singular."""
    keep = np.ones(len(dt), bool)
    for _ in range(2):
        if keep.sum() < deg + 2:
            return float("nan"), float("nan")
        scale = np.max(np.abs(dt[keep])) or 1.0
        u = dt / scale
        design = np.column_stack([u**p for p in range(deg + 1)]) / err[:, None]
        try:
            coef, *_ = np.linalg.lstsq(design[keep], y[keep] / err[keep], rcond=None)
            cov = np.linalg.inv(design[keep].T @ design[keep])
        except np.linalg.LinAlgError:
            return float("nan"), float("nan")
        resid = (y - sum(c * u**p for p, c in enumerate(coef))) / err
        worst = int(np.argmax(np.where(keep, np.abs(resid), -1.0)))
        if abs(resid[worst]) <= 4.0:
            break
        keep[worst] = False  # one neighbour that is itself an outlier
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


@dataclass
class _Night:
    """The per-frame conditions and stacked measurements every reduce step shares."""

    frame_ok: np.ndarray
    jd: np.ndarray
    exptime: np.ndarray
    airmass: np.ndarray
    airmass_source: str
    scint: np.ndarray
    site: Any
    coords: dict[str, Any]
    flux_all: np.ndarray  # [frame, obj, radius] e-
    err_all: np.ndarray
    base_valid: np.ndarray  # [frame, obj]
    comp_idx: np.ndarray
    names: list[str]
    pinned_in: list[str]
    targets: list[int]
    # background variance (e², per radius index) the CCD equation misses, measured on the
    # empty-sky apertures and added to every star's error; 0 where not significant
    excess_var: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _prepare(
    settings: Settings, frames: list[FrameInfo], plan: Any, results: list, notes: dict[str, Any]
) -> _Night:
    """Stack the measurements; site, airmass and scintillation per frame."""
    objs = plan.objects
    n_obj, n_r = len(objs), len(plan.apertures.radii)
    n_f = len(results)
    frame_ok = np.array([r.status == "ok" for r in results])
    jd = np.array([f.jd_utc_mid for f in frames])
    exptime = np.array([f.exptime for f in frames])
    flux_all = _stack(results, "flux", n_obj, n_r)
    err_all = _stack(results, "flux_err", n_obj, n_r)
    status = np.array([r.columns["obj_status"] for r in results], dtype=object).reshape(n_f, n_obj)
    base_valid = frame_ok[:, None] & (status == "ok")

    site, coords = _site_and_coords(settings, frames, plan, notes)
    target0 = next(o for o in objs if o.role == "target")
    airmass = np.array([f.airmass if f.airmass is not None else np.nan for f in frames], float)
    airmass_source = "header AIRMASS"
    if site is not None and target0.name in coords and np.isfinite(jd).any():
        am = np.full(n_f, np.nan)
        fin = np.isfinite(jd)
        am[fin] = timing.airmass(jd[fin], coords[target0.name], site)
        airmass, airmass_source = am, "computed from site, time and target position"
    notes["airmass_source"] = airmass_source

    diameter = settings.aperture_diameter_m
    if diameter is None:
        prof = next((f.profile for f in frames if f.status == "ok"), "generic")
        diameter = PROFILE_APERTURE_M.get(prof)
        assumed = f"telescope aperture {diameter} m ({prof} profile)"
        if diameter is not None and assumed not in notes["assumed"]:
            notes["assumed"].append(assumed)
    altitude = float(site.height.to_value("m")) if site is not None else 0.0
    if diameter is not None and np.isfinite(airmass).any():
        # frames that could not be read have no airmass or exposure time: give them a
        # placeholder here; they carry no measurement, so the value is never used
        am_fill = np.where(np.isfinite(airmass), airmass, np.nanmedian(airmass))
        t_fill = np.where(exptime > 0, exptime, np.nanmedian(exptime[exptime > 0]))
        scint = np.asarray(noise.scintillation_sigma(diameter, am_fill, t_fill, altitude), float)
        scint[~frame_ok] = np.nan
        notes["scintillation"] = (
            f"Young (1967) × 1.5 (Osborn et al. 2015), D = {diameter} m, h = {altitude:.0f} m"
        )
    else:
        scint = np.zeros(n_f)
        notes["scintillation"] = (
            "not included: telescope aperture or airmass unknown (--aperture-diameter)"
        )

    comp_idx = np.array([i for i, o in enumerate(objs) if o.role == "comp"])
    excess_var = background_excess(plan, results, frame_ok, notes)
    return _Night(
        frame_ok=frame_ok,
        jd=jd,
        exptime=exptime,
        airmass=airmass,
        airmass_source=airmass_source,
        scint=scint,
        site=site,
        coords=coords,
        flux_all=flux_all,
        err_all=err_all,
        base_valid=base_valid,
        comp_idx=comp_idx,
        names=[objs[i].name for i in comp_idx],
        pinned_in=[o.name for o in objs if o.role == "comp" and o.pinned],
        targets=[i for i, o in enumerate(objs) if o.role == "target"],
        excess_var=excess_var,
    )


def background_excess(plan: Any, results: list, frame_ok: np.ndarray, notes: dict) -> np.ndarray:
    """Per radius index, the background variance (e²) every star's error gets on top of the
    CCD equation: the empty-sky apertures' excess scatter (noise.background_excess) where it
    is significant, else 0; what was measured goes into notes["background_excess"]."""
    n_r = len(plan.apertures.radii)
    sky_xy = getattr(plan, "sky_xy", None)
    if sky_xy is None or len(sky_xy) == 0:
        notes["background_excess"] = {"applied": False, "why": "no empty-sky apertures measured"}
        return np.zeros(n_r)
    n_s = len(sky_xy)
    flux = np.full((len(results), n_s, n_r), np.nan)
    bkg = np.full((len(results), n_s, n_r), np.nan)
    ok = np.zeros((len(results), n_s), bool)
    for i, r in enumerate(results):
        c = r.columns
        if frame_ok[i] and "skyap_flux" in c:
            flux[i], bkg[i] = c["skyap_flux"], c["skyap_bkg_err"]
            ok[i] = c["skyap_status"] == "ok"
    out = np.zeros(n_r)
    per_radius = {}
    for k, rad in enumerate(plan.apertures.radii):
        est = noise.background_excess(flux[:, :, k], bkg[:, :, k] ** 2, ok)
        out[k] = est["applied_var_e2"]
        per_radius[f"{float(rad):g}"] = est
    notes["background_excess"] = {
        "applied": bool(np.any(out > 0)),
        "n_sky_apertures": n_s,
        "per_radius_px": per_radius,
        "method": "empty-sky apertures placed on the reference frame away from every star, "
        "measured in every frame like the stars without recentring; per aperture the temporal "
        "variance (5-sigma clipped) minus the CCD equation's mean predicted background "
        "variance; apertures beyond 4 sigma (MAD) of the median dropped; excess = mean, error = "
        f"standard error over the apertures; added in quadrature (e², per radius) to every "
        f"star's flux error when at least {noise.EXCESS_SIGNIFICANCE:g} errors above zero",
    }
    return out


def _solve(night: _Night, k: int, gain_factor: float = 1.0) -> tuple:
    """Magnitudes and the comparison ensemble at radius index k (fluxes rescaled by a gain)."""
    flux, ferr = noise.rescale_gain(night.flux_all[:, :, k], night.err_all[:, :, k], gain_factor)
    valid = night.base_valid & np.isfinite(flux) & (flux > 0)
    # the measured background excess, a background in ADU²: it scales with the gain squared
    excess = _excess_at(night, k) * gain_factor**2
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = -2.5 * np.log10(flux / night.exptime[:, None]) + MAG_ZERO_POINT
        mag_err = 1.0857362 * np.sqrt((ferr**2 + excess) / flux**2 + night.scint[:, None] ** 2)
    ci = night.comp_idx
    ens = ensemble.everett_howell(
        mag[:, ci],
        mag_err[:, ci],
        valid[:, ci],
        night.names,
        pinned_in=night.pinned_in,
        # variability is judged after each star's own airmass term (colour extinction)
        airmass=night.airmass if np.isfinite(night.airmass).sum() > 3 else None,
    )
    return flux, ferr, mag, mag_err, valid, ens


def _excess_at(night: _Night, k: int) -> float:
    """The background excess variance (e²) at radius index k; 0 when none was measured."""
    return float(night.excess_var[k]) if k < night.excess_var.size else 0.0


@dataclass
class GainEstimate:
    """A detector gain estimated from the comparison stars' scatter (photon transfer)."""

    gain: float  # e-/ADU
    error: float
    n_stars: int
    per_star: dict[str, float]
    iterations: int
    method: str = (
        "photon transfer across the comparison stars: each star's point-to-point scatter "
        "against the ensemble minus its background, scintillation and ensemble terms, set "
        "against its photon noise at 1 e-/ADU; weighted least squares over the stars with "
        "outlying stars clipped"
    )


MIN_GAIN_STARS = 5


def estimate_gain(
    settings: Settings, frames: list[FrameInfo], plan: Any, results: list, notes: dict[str, Any]
) -> GainEstimate | None:
    """Gain (e-/ADU) from the comparison stars when no header or setting gives it; None if unsure.

    Fluxes were measured at ``plan.gain``; only their photon term depends on the gain, so the
    estimate iterates: rescale, solve the ensemble, compare each star's scatter with its terms.
    """
    night = _prepare(settings, frames, plan, results, {**notes, "assumed": list(notes["assumed"])})
    k = len(plan.apertures.radii) // 2
    g0 = float(plan.gain)
    g = g0
    est = None
    for it in range(1, 9):
        flux, ferr, _, _, valid, ens = _solve(night, k, g / g0)
        ach, p_unit, other, n_pts, used_names = [], [], [], [], []
        ci = night.comp_idx
        with np.errstate(invalid="ignore", divide="ignore"):
            # per frame and comparison star: photon variance at 1 e-/ADU, and the rest
            p_fr = g / flux[:, ci]
            bkg = ferr[:, ci] ** 2 - np.clip(flux[:, ci], 0, None)
            o_fr = (bkg + _excess_at(night, k) * (g / g0) ** 2) / flux[:, ci] ** 2
            o_fr = o_fr + night.scint[:, None] ** 2
        live = valid[:, ci] & ens.used[None, :] & np.isfinite(p_fr) & np.isfinite(o_fr)
        w = np.where(live, ens.weights[None, :], 0.0)
        for j, name in enumerate(ens.names):
            ok = live[:, j] & np.isfinite(ens.loo_mag[:, j])
            if ok.sum() < 20:
                continue
            # the ensemble of the others: its photon and other variance, weights renormalised
            wo = w[ok].copy()
            wo[:, j] = 0.0
            wo /= wo.sum(axis=1, keepdims=True)
            ens_p = np.nansum(wo**2 * np.where(live[ok], p_fr[ok], 0.0), axis=1)
            ens_o = np.nansum(wo**2 * np.where(live[ok], o_fr[ok], 0.0), axis=1)
            ach.append(noise.robust_white_var(ens.loo_mag[ok, j]) / noise.MAG_PER_FRAC**2)
            p_unit.append(float(np.mean(p_fr[ok, j] + ens_p)))
            other.append(float(np.mean(o_fr[ok, j] + ens_o)))
            n_pts.append(int(ok.sum()))
            used_names.append(name)
        if len(ach) < MIN_GAIN_STARS:
            return None
        g_new, g_err, kept = noise.gain_from_scatter(ach, p_unit, other, n_pts)
        if not np.isfinite(g_new) or g_new <= 0 or kept.sum() < MIN_GAIN_STARS:
            return None
        # each star's own estimate, for the record (infinite where its scatter shows no
        # photon noise above the other terms)
        excess = np.array(ach) - np.array(other)
        g_i = np.where(excess > 0, np.array(p_unit) / np.where(excess > 0, excess, 1), np.inf)
        done = abs(np.log(g_new / g)) < 0.005
        g = g_new
        est = GainEstimate(
            gain=float(g),
            error=float(g_err),
            n_stars=int(kept.sum()),
            per_star={n: float(v) for n, v in zip(used_names, g_i, strict=True)},
            iterations=it,
        )
        if done:
            break
    return est


def reduce(
    settings: Settings,
    frames: list[FrameInfo],
    plan: Any,
    results: list,
    notes: dict[str, Any],
) -> Reduced:
    """Turn per-frame measurements into ensemble-corrected differential light curves."""
    objs = plan.objects
    n_f = len(results)
    night = _prepare(settings, frames, plan, results, notes)
    frame_ok, jd, exptime = night.frame_ok, night.jd, night.exptime
    airmass, airmass_source, scint = night.airmass, night.airmass_source, night.scint
    site, coords, comp_idx, targets = night.site, night.coords, night.comp_idx, night.targets

    bjd_of: dict[str, np.ndarray] = {}
    for o in objs:
        bjd = np.full(n_f, np.nan)
        if o.role != "comp" and site is not None and o.name in coords:
            fin = np.isfinite(jd)
            bjd[fin] = timing.bjd_tdb(jd[fin], coords[o.name], site)
        bjd_of[o.name] = bjd

    # sky brightness per second (ADU/s) of every frame, for the bright-sky flag
    with np.errstate(invalid="ignore", divide="ignore"):
        sky_rate = np.array([r.sky_level for r in results], float) / exptime

    def build(k: int) -> Reduced:
        flux, ferr, mag, mag_err, valid, ens = _solve(night, k)
        with np.errstate(invalid="ignore"):
            transparency = 10 ** (-0.4 * (ens.offset - np.nanmedian(ens.offset)))
            cloudy = transparency < settings.min_transparency
        quality, quality_reason, bright = frame_quality(
            transparency,
            sky_rate,
            jd,
            frame_ok,
            settings.min_transparency,
            settings.thin_cloud,
            settings.max_sky_ratio,
        )
        red = Reduced(
            radius_index=k,
            radius=float(plan.apertures.radii[k]),
            scatter_by_radius={},
            jd_utc=jd,
            airmass=airmass,
            airmass_source=airmass_source,
            exptime=exptime,
            frame_ok=frame_ok,
            flux=flux,
            flux_err=ferr,
            mag=mag,
            mag_err=mag_err,
            valid=valid,
            scint=scint,
            transparency=transparency,
            cloudy=cloudy,
            ensemble=ens,
            comp_index=comp_idx,
            notes=notes,
            object_names=[o.name for o in objs],
            quality=quality,
            quality_reason=quality_reason,
            bright_sky=bright,
            excess_var=_excess_at(night, k),
        )
        for i, o in enumerate(objs):
            if o.role == "comp":
                continue
            dm, de = ensemble.differential(mag[:, i], mag_err[:, i], ens)
            v = valid[:, i] & np.isfinite(dm) & np.isfinite(de) & ~cloudy & ~bright
            ref = np.median(dm[v]) if v.any() else 0.0
            rel = 10 ** (-0.4 * (dm - ref))
            rel_err = rel * de / 1.0857362
            out, _ = flag_outliers(dm, de, v, settings.outlier_sigma, t=jd)
            v = v & ~out
            c = Curve(o.name, o.role, dm, de, rel, rel_err, v, bjd_of[o.name], outlier=out)
            if v.sum() > 2:
                c.rms = float(np.std(rel[v]))
                c.median_err = float(np.median(rel_err[v]))
            red.curves[o.name] = c
        if settings.transit is not None:
            _fit_transits(settings, red, results, objs)
        return red

    def scatter_of(red: Reduced) -> float:
        vals = []
        for t in targets:
            c = red.curves[objs[t].name]
            if c.fit is not None:
                vals.append(float(c.fit.residual_rms))
            else:
                vals.append(_robust_p2p(np.where(c.valid, c.rel_flux, np.nan)))
        return float(np.median(vals))

    # Every radius is reduced in full and the one whose target curve scatters least is kept:
    # with a transit model that is the fit's residual rms (what the user judges a curve by),
    # otherwise the point-to-point scatter, which slow trends and a transit do not inflate.
    scatter: dict[float, float] = {}
    best_red = None
    for k, r in enumerate(plan.apertures.radii):
        red_k = build(k)
        scatter[float(r)] = scatter_of(red_k)
        if best_red is None or scatter[float(r)] < scatter[best_red.radius]:
            best_red = red_k
    assert best_red is not None
    red = best_red
    red.scatter_by_radius = scatter
    red.terms, red.budget = noise_budget(red, objs)
    red.mag_scale = _catalogue_scale(red, objs)
    notes["radius_chosen_by"] = (
        "lowest residual rms of the transit fit"
        if settings.transit is not None
        else "lowest point-to-point scatter of the target's relative flux"
    )
    if red.bright_sky.any():
        files = [os.path.basename(frames[i].path) for i in np.nonzero(red.bright_sky)[0]]
        log.warning(
            "%d frame(s) with a sky over %.0f times the night's median left out of the light "
            "curves (--max-sky-ratio): %s",
            len(files),
            settings.max_sky_ratio,
            ", ".join(files[:10]) + (" …" if len(files) > 10 else ""),
        )
    if red.cloudy.any():
        files = [os.path.basename(frames[i].path) for i in np.nonzero(red.cloudy)[0]]
        log.warning(
            "%d frame(s) under thick cloud left out of the light curves (comparison flux below "
            "%.0f%% of the night's median; --min-transparency): %s",
            len(files),
            100 * settings.min_transparency,
            ", ".join(files[:10]) + (" …" if len(files) > 10 else ""),
        )
    return red


def _catalogue_scale(red: Reduced, objs: list) -> dict[str, Any] | None:
    """Put every curve on the catalogue scale of the first comparison star given a magnitude.

    The star's differential magnitude against the ensemble is on the same scale as every
    target's, so zero point = its catalogue magnitude − the median of that curve.
    """
    ens = red.ensemble
    for i in red.comp_index:
        o = objs[int(i)]
        if o.catalog_mag is None:
            continue
        diff = red.mag[:, int(i)] - ens.offset
        v = red.valid[:, int(i)] & np.isfinite(diff)
        if v.sum() < 3:
            continue
        own = diff[v]
        zp = float(o.catalog_mag - np.median(own))
        zp_err = float(1.2533 * np.std(own) / np.sqrt(v.sum()))
        for c in red.curves.values():
            c.std_mag = c.diff_mag + zp
        return {
            "comparison": o.name,
            "catalog_mag": float(o.catalog_mag),
            "zero_point": zp,
            "zero_point_err": zp_err,
        }
    return None


def noise_budget(red: Reduced, objs: list) -> tuple[dict, dict]:
    """Each star's predicted noise, term by term, per frame, against its achieved scatter.

    Terms are fractional 1-sigma per frame: the star's photons, the background (sky photons,
    dark and read noise as measured in the annulus, and the error of the sky level), the
    background excess (the background noise the CCD equation misses, measured on empty-sky
    apertures: correlated or fixed-pattern sky; 0 when not significant), the scintillation,
    and the ensemble's error (for a comparison star: the ensemble of the
    others). The prediction is their quadrature sum, the rms over the star's valid frames.
    The achieved scatter is the transit fit's residual rms where one was made, otherwise the
    point-to-point white-noise rms (insensitive to slow trends and to a star's variability).
    """
    ens = red.ensemble
    col_of = {int(i): j for j, i in enumerate(red.comp_index)}
    terms: dict[str, dict[str, np.ndarray]] = {}
    budget: dict[str, dict[str, Any]] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, o in enumerate(objs):
            f, e = red.flux[:, i], red.flux_err[:, i]
            photon = np.sqrt(np.clip(f, 0, None)) / f
            background = np.sqrt(np.clip(e**2 - np.clip(f, 0, None), 0, None)) / f
            excess = np.sqrt(red.excess_var) / f
            if o.role == "comp":
                j = col_of[i]
                ens_err = np.sqrt(np.clip(ens.loo_err[:, j] ** 2 - red.mag_err[:, i] ** 2, 0, None))
                curve = ens.loo_mag[:, j] / noise.MAG_PER_FRAC
                valid = red.valid[:, i] & np.isfinite(curve) & ~red.cloudy & ~red.bright_sky
                fit = None
            else:
                ens_err = ens.offset_err
                c = red.curves[o.name]
                curve = c.rel_flux
                valid = c.valid
                fit = c.fit
            t = {
                "photon": photon,
                "background": background,
                "background_excess": excess,
                "scintillation": red.scint,
                "ensemble": ens_err / noise.MAG_PER_FRAC,
            }
            t["total"] = np.sqrt(sum(v**2 for v in t.values()))
            terms[o.name] = t
            v = valid & np.isfinite(t["total"])
            if v.sum() < 5:
                continue
            predicted = float(np.sqrt(np.mean(t["total"][v] ** 2)))
            if fit is not None:
                achieved, how = float(fit.residual_rms), "transit-fit residual rms"
            else:
                achieved = float(np.sqrt(noise.robust_white_var(curve[v])))
                how = "point-to-point white-noise rms"
            budget[o.name] = {
                "role": o.role,
                "mag": float(np.nanmedian(red.mag[v, i])),
                "predicted": predicted,
                "achieved": achieved,
                "achieved_from": how,
                "ratio": achieved / predicted,
                "terms": {k: float(np.sqrt(np.mean(x[v] ** 2))) for k, x in t.items()},
                "used_in_ensemble": bool(ens.used[col_of[i]]) if o.role == "comp" else None,
            }
    return terms, budget


def _regressors(red: Reduced, results: list, i: int, terms: list[str]) -> dict[str, np.ndarray]:
    regs: dict[str, np.ndarray] = {}
    for term in terms:
        if term == "airmass":
            regs[term] = red.airmass
        elif term == "sky":
            regs[term] = np.array([r.columns["sky"][i] for r in results])
        elif term == "fwhm":
            regs[term] = np.array([r.fwhm for r in results])
        elif term in ("x", "y"):
            regs[term] = np.array([r.columns[term][i] for r in results])
        elif term == "flip":
            regs[term] = flip_state(results)
    return regs


def flip_state(results: list) -> np.ndarray:
    """1.0 for frames taken after a meridian flip (field turned by ~180°), 0.0 before; NaN
    where a frame was not registered."""
    out = np.full(len(results), np.nan)
    for k, r in enumerate(results):
        if r.transform is not None:
            out[k] = float(abs(r.transform.rotation_deg) > 90.0)
    return out


def _fit_transits(settings: Settings, red: Reduced, results: list, objs: list) -> None:
    """Fit the transit model with detrending to each target's light curve."""
    from tsphot import fit

    tp = settings.transit
    assert tp is not None
    for i, o in enumerate(objs):
        if o.role != "target":
            continue
        c = red.curves[o.name]
        t = c.bjd_tdb if np.isfinite(c.bjd_tdb).any() else red.jd_utc
        terms = list(settings.detrend)
        flips = flip_state(results)
        fin = flips[np.isfinite(flips)]
        if "flip" not in terms and fin.size and fin.min() != fin.max():
            # an observer always allows for an offset across a meridian flip
            terms.append("flip")
        regs = _regressors(red, results, i, terms)
        use = c.valid & np.isfinite(t)
        for v in regs.values():
            use &= np.isfinite(v)
        if use.sum() < 10:
            red.notes.setdefault("fit_skipped", {})[o.name] = f"only {int(use.sum())} valid points"
            continue
        params = fit.TransitParams(
            t0=tp.t0,
            period=tp.period,
            rp=tp.rp,
            a=tp.a,
            inc=tp.inc,
            ecc=tp.ecc,
            w=tp.w,
            u=tuple(tp.u),
            limb_dark=tp.limb_dark,
        )
        try:
            c.fit = fit.fit_transit(
                t[use],
                c.rel_flux[use],
                c.rel_flux_err[use],
                params,
                regressors={k: v[use] for k, v in regs.items()},
                exptime_s=float(np.nanmedian(red.exptime)),
            )
            c.fit_mask = use
        except Exception as exc:  # a failed fit must not lose the light curve
            red.notes.setdefault("fit_failed", {})[o.name] = f"{type(exc).__name__}: {exc}"
            log.warning("transit fit of %s failed: %s", o.name, exc)
