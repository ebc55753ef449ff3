"""Simulate a night of raw CCD exposures of one field, with calibration frames and exact truth.

Per science frame k (exposure start ``start_utc + k * cadence``, mid-time + exptime / 2):

- airmass X_k = sec z from astropy ``AltAz`` (no refraction) at mid-exposure; BJD_TDB from
  astropy ``Time.light_travel_time``;
- star i's electrons ``F = flux_i * exptime * 10**(-0.4 * extinction * X) * transparency
  * astro * (1 + N(0, sigma_s))`` with ``astro`` the batman transit (target), a sinusoid (the
  variable comparison) or 1, and sigma_s = 1.5 * 0.09 D^(-2/3) X^1.75 exp(-h/8000) (2 t)^(-1/2);
- position ``p_k = R(theta_k) (p_0 - c) + c + d_k`` about the frame centre c, with theta the
  field rotation (+180 deg after a meridian flip) and d the drift, jitter and flip offset;
- expected electrons per pixel ``m = flat * (sky + stars) + dark_rate * exptime``, with sky =
  sky_zenith * exptime * X * (linear gradient plane), stars rendered as pixel-integrated Moffat
  stamps that sum exactly to F;
- noise: Poisson, drawn exactly where m < poisson_exact_below and as N(m, m) above it (equal
  mean and variance; skewness < 3 %), plus Gaussian read noise; cosmic rays (electrons, not
  flat-fielded); ``ADU = rint(e / gain + bias_columns)`` clipped to [0, saturation_adu] and
  written as uint16 (BITPIX 16, BZERO 32768) the way cameras do.

Every random draw comes from a child of ``numpy.random.SeedSequence``: the field, instrument
and weather from ``seed``; each frame's noise from its own child (spawn key by frame index), so
frame k's noise does not depend on the number of frames. Identical configs give byte-identical
files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import AltAz, Angle, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from tsphot import executors

from .config import SimConfig
from .psf import render_stamps, stamp_halfwidth
from .truth import (
    COSMICS_ECSV,
    EXPOSURES_ECSV,
    FRAMES_ECSV,
    MAPS_FITS,
    STARS_ECSV,
    TRUTH_JSON,
    Truth,
    pattern_kernel,
    scintillation_sigma,
)

__all__ = ["simulate_night"]

LD_COEFFS = (0.4, 0.25)
# Streams of the seed sequence (spawn keys).
_FIELD, _INSTRUMENT, _WEATHER, _CALIB, _SCIENCE, _DEFECTS, _VARIABLES, _PATTERN = range(8)


def _configure_offline() -> None:
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.iers_degraded_accuracy = "warn"


def _rng(entropy: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))


# ----------------------------------------------------------------------------------------------
# Geometry and time


def _wcs(cfg: SimConfig, crpix0: tuple[float, float], rot_deg: float, dxy: np.ndarray) -> WCS:
    """TAN WCS of a frame whose pixels are frame-0 pixels rotated by rot_deg and shifted by dxy."""
    s = cfg.pixel_scale / 3600.0
    th = np.deg2rad(rot_deg)
    rinv = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [cfg.ra_dec[0], cfg.ra_dec[1]]
    w.wcs.crpix = [crpix0[0] + dxy[0] + 1.0, crpix0[1] + dxy[1] + 1.0]  # FITS is 1-based
    w.wcs.cdelt = [-s, s]  # north up, east left at frame 0
    w.wcs.pc = rinv  # CD = diag(cdelt) @ R(-theta): pixel offsets rotate back to frame 0
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def _solve_orbit(cfg: SimConfig) -> tuple[float, float]:
    """a/Rs and inclination (deg) giving the requested total duration T14 for impact_param b."""
    k = math.sqrt(cfg.transit_depth)
    b = cfg.impact_param
    if b >= 1 + k:
        raise ValueError("SimConfig: impact_param too large for a transit")
    s = math.sin(math.pi * cfg.transit_duration_h / 24.0 / cfg.period_d)
    # T14 = P/pi asin(sqrt((1+k)^2 - b^2) / (a sin i)) with a sin i = sqrt(a^2 - b^2).
    a_rs = math.sqrt(b * b + ((1 + k) ** 2 - b * b) / (s * s))
    return a_rs, math.degrees(math.acos(b / a_rs))


def _transit_model(cfg: SimConfig, t_rel_d: np.ndarray, a_rs: float, inc: float) -> np.ndarray:
    import batman

    if cfg.transit_depth <= 0:
        return np.ones_like(t_rel_d)
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc = 0.0, cfg.period_d, math.sqrt(cfg.transit_depth), a_rs, inc
    p.ecc, p.w, p.limb_dark, p.u = 0.0, 90.0, "quadratic", list(LD_COEFFS)
    return np.asarray(batman.TransitModel(p, np.asarray(t_rel_d, dtype=float)).light_curve(p))


# ----------------------------------------------------------------------------------------------
# The field


def _special_stars(cfg: SimConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    t = cfg.target_mag
    stars = [{"name": "T1", "role": "target", "mag": t}]
    for i in range(cfg.n_comps):
        stars.append({"name": f"C{i + 1}", "role": "comparison", "mag": t + rng.uniform(-0.8, 1.0)})
    stars.append({"name": "CHK", "role": "check", "mag": t + rng.uniform(-0.3, 0.5)})
    stars.append({"name": "SAT", "role": "saturated", "mag": t - 3.5})
    if cfg.asteroid:
        stars.append({"name": "AST", "role": "asteroid", "mag": cfg.asteroid_mag})
    return stars


def _asteroid_lightcurve(cfg: SimConfig, t_h: np.ndarray) -> np.ndarray:
    """Flux factor of the asteroid's rotation: a double-peaked curve (two maxima per turn, as an
    elongated body gives) with a weaker single-peaked term for its uneven shape; mean 0 mag."""
    ph = 2 * np.pi * np.asarray(t_h, dtype=float) / cfg.asteroid_period_h
    half = 0.5 * cfg.asteroid_amplitude
    dmag = half * np.cos(2 * ph) + 0.15 * half * np.cos(ph + 1.0)
    return 10 ** (-0.4 * dmag)


def _place_special(
    cfg: SimConfig, stars: list[dict[str, Any]], rng: np.random.Generator
) -> np.ndarray:
    nx, ny = cfg.size
    margin = 40.0
    pos: list[tuple[float, float]] = []
    for s in stars:
        min_sep = 50.0 if s["role"] == "saturated" else 30.0
        for _ in range(20000):
            x, y = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
            ok = True
            for (px, py), other in zip(pos, stars, strict=False):
                sep = max(min_sep, 50.0 if other["role"] == "saturated" else 30.0)
                if (x - px) ** 2 + (y - py) ** 2 < sep * sep:
                    ok = False
                    break
            if ok:
                pos.append((x, y))
                break
        else:
            raise ValueError("SimConfig: frame too small to place the isolated special stars")
    return np.array(pos)


def _field_stars(
    cfg: SimConfig,
    n: int,
    special_xy: np.ndarray,
    special_mag: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Field stars, N(<m) ~ 10^(0.3 m); none brighter than (special + 3 mag) within 25 px of a
    special star, none brighter than (special + 1 mag) within 30 px."""
    nx, ny = cfg.size
    lo, hi = 10 ** (0.3 * cfg.mag_range[0]), 10 ** (0.3 * cfg.mag_range[1])
    xs, ys, ms = [], [], []
    n_done = 0
    for _ in range(1000):
        if n_done >= n:
            break
        m = np.log10(lo + rng.uniform(size=4 * n + 16) * (hi - lo)) / 0.3
        x = rng.uniform(0, nx - 1, m.size)
        y = rng.uniform(0, ny - 1, m.size)
        d2 = (x[:, None] - special_xy[None, :, 0]) ** 2 + (y[:, None] - special_xy[None, :, 1]) ** 2
        bad = ((d2 < 25.0**2) & (m[:, None] < special_mag[None, :] + 3.0)) | (
            (d2 < 30.0**2) & (m[:, None] < special_mag[None, :] + 1.0)
        )
        keep = ~bad.any(axis=1)
        take = np.flatnonzero(keep)[: n - n_done]
        xs.append(x[take])
        ys.append(y[take])
        ms.append(m[take])
        n_done += take.size
    if n_done < n:
        raise ValueError("SimConfig: could not place the field stars")
    return np.column_stack([np.concatenate(xs), np.concatenate(ys)]), np.concatenate(ms)


def eclipsing_shape(phase: np.ndarray, width: float = 0.2, secondary: float = 0.7) -> np.ndarray:
    """Flux loss 0..1 of a contact-like eclipsing binary: V-shaped minima at phase 0 and 0.5."""
    ph = np.asarray(phase, float) % 1.0
    prim = np.clip(1 - np.abs((ph + 0.5) % 1.0 - 0.5) / width, 0, 1)
    sec = secondary * np.clip(1 - np.abs(ph - 0.5) / width, 0, 1)
    return np.maximum(prim, sec)


def _field_variables(
    cfg: SimConfig,
    roles: list[str],
    mags: np.ndarray,
    xy: np.ndarray,
    bjd: np.ndarray,
    night_d: float,
) -> list[dict[str, Any]]:
    """Choose field stars to vary and their light curves (astro factor per frame)."""
    if cfg.n_field_variables == 0:
        return []
    rng = _rng(cfg.seed, _VARIABLES)
    lo, hi = cfg.field_var_mag
    nx, ny = cfg.size
    mg = cfg.field_var_margin
    inner = (xy[:, 0] > mg) & (xy[:, 0] < nx - 1 - mg) & (xy[:, 1] > mg) & (xy[:, 1] < ny - 1 - mg)
    pool = [i for i, r in enumerate(roles) if r == "field" and lo <= mags[i] <= hi and inner[i]]
    if len(pool) < cfg.n_field_variables:
        raise ValueError(
            f"SimConfig: only {len(pool)} field stars in field_var_mag {cfg.field_var_mag} and "
            f"{mg} px inside the edges for {cfg.n_field_variables} field variables; widen the "
            "range or add stars"
        )
    chosen = rng.choice(pool, size=cfg.n_field_variables, replace=False)
    out = []
    for k, star in enumerate(sorted(int(c) for c in chosen)):
        kind = "sinusoid" if k % 2 == 0 else "eclipsing"
        ptp = float(np.exp(rng.uniform(*np.log(cfg.field_var_ptp))))
        period = float(rng.uniform(*cfg.field_var_period)) * night_d
        phase = float(rng.uniform(0, 1))
        ph = (bjd - bjd[0]) / period + phase
        if kind == "sinusoid":
            factor = 1.0 + 0.5 * ptp * np.sin(2 * np.pi * ph)
            formula = "1 + ptp/2 * sin(2 pi ((bjd - t_ref) / period + phase))"
        else:
            factor = 1.0 - ptp * eclipsing_shape(ph)
            formula = "1 - ptp * eclipsing_shape((bjd - t_ref) / period + phase)"
        out.append(
            {
                "star": star,
                "type": kind,
                "ptp": ptp,
                "period_d": period,
                "phase": phase,
                "t_ref_bjd_tdb": float(bjd[0]),
                "formula": formula,
                "realised_ptp": float(factor.max() - factor.min()),
                "factor": factor,
            }
        )
    return out


def _flat_field(cfg: SimConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[list[float]]]:
    nx, ny = cfg.size
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (cx**2 + cy**2)
    flat = 1.0 - cfg.flat_vignetting * r2
    dust = []
    scale = min(nx, ny)
    for _ in range(cfg.flat_dust):
        dx, dy = rng.uniform(0.1 * nx, 0.9 * nx), rng.uniform(0.1 * ny, 0.9 * ny)
        rad = rng.uniform(0.02, 0.045) * scale
        depth = rng.uniform(0.02, 0.06)
        r = np.hypot(xx - dx, yy - dy)
        # A donut: out-of-focus shadow of a dust grain, darkest on a ring of radius rad.
        flat *= 1.0 - depth * np.exp(-0.5 * ((r - rad) / (0.25 * rad)) ** 2)
        dust.append([dx, dy, rad, depth])
    flat *= 1.0 + cfg.flat_pixel_rms * rng.standard_normal((ny, nx))
    flat /= flat.mean()
    return flat, dust


def sky_pattern(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A stationary Gaussian random field of unit variance per pixel and Gaussian correlation:
    white noise smoothed (periodically, so every pixel is alike) by pattern_kernel(scale)."""
    from scipy.ndimage import correlate1d

    k = pattern_kernel(scale)
    field = rng.standard_normal(shape)
    field = correlate1d(field, k, axis=0, mode="wrap")
    return correlate1d(field, k, axis=1, mode="wrap")


def _bias_columns(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    nx = cfg.size[0]
    x = np.arange(nx)
    pat = np.sin(2 * np.pi * x / rng.uniform(50, 200) + rng.uniform(0, 2 * np.pi))
    pat = pat + rng.standard_normal(nx)
    pat -= pat.mean()
    std = pat.std()
    pat = pat * (cfg.bias_column_amp / std) if std > 0 else pat * 0
    return cfg.bias_level + pat


def _defects(
    cfg: SimConfig, hot_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dead pixels (index, flat response) and unstable pixels (index, jump in e-), not hot ones.

    They come from their own random stream, so turning them on changes no other draw.
    """
    nx, ny = cfg.size
    n_dead, n_unst = cfg.n_dead_pixels, cfg.n_unstable_pixels
    if n_dead + n_unst == 0:
        empty = np.zeros(0, int)
        return empty, np.zeros(0), empty, np.zeros(0)
    rng = _rng(cfg.seed, _DEFECTS)
    free = np.setdiff1d(np.arange(nx * ny), hot_idx)
    idx = rng.choice(free, size=min(n_dead + n_unst, free.size), replace=False)
    dead, unst = idx[:n_dead], idx[n_dead:]
    return dead, rng.uniform(0.0, 0.3, dead.size), unst, rng.uniform(60.0, 300.0, unst.size)


def _with_unstable(
    model_e: np.ndarray,
    unst_idx: np.ndarray,
    unst_amp: np.ndarray,
    entropy: int,
    *key: int,
) -> np.ndarray:
    """Expected electrons plus each unstable pixel's jump, on in a random half of exposures."""
    if unst_idx.size == 0:
        return model_e
    on = _rng(entropy, _DEFECTS, *key).random(unst_idx.size) < 0.5
    out = model_e.copy()
    out.flat[unst_idx] += np.where(on, unst_amp, 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# Pixels


def _add_stars(
    img: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, fwhm: float, beta: float
) -> None:
    ny, nx = img.shape
    half = stamp_halfwidth(flux, fwhm, beta)
    half = (np.ceil(half / 4.0) * 4).astype(int)  # fewer distinct stamp sizes to vectorise
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    bright = flux > 1e5
    inside = (ix + half >= 0) & (ix - half < nx) & (iy + half >= 0) & (iy - half < ny)
    inside &= flux > 0
    for h in np.unique(half[inside]):
        for br in (False, True):
            sel = np.flatnonzero(inside & (half == h) & (bright == br))
            if sel.size == 0:
                continue
            os_, core = (5, 2.5) if br else (3, 1.5)
            stamps = render_stamps(
                x[sel] - ix[sel], y[sel] - iy[sel], int(h), fwhm, beta, os_, core
            )
            for j, i in enumerate(sel):
                x0, y0 = ix[i] - h, iy[i] - h
                xa, ya = max(x0, 0), max(y0, 0)
                xb, yb = min(x0 + 2 * h + 1, nx), min(y0 + 2 * h + 1, ny)
                img[ya:yb, xa:xb] += flux[i] * stamps[j, ya - y0 : yb - y0, xa - x0 : xb - x0]


def _cosmics(
    cfg: SimConfig, rng: np.random.Generator, exptime: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray hits: short straight tracks of 1-4 pixels, 1500-30000 e- per pixel."""
    nx, ny = cfg.size
    if not cfg.cosmic_rays:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    n = rng.poisson(cfg.cosmic_rate * nx * ny / 1e6 * exptime / 60.0)
    xs, ys, es = [], [], []
    for _ in range(n):
        x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        length = rng.integers(1, 5)
        ang = rng.uniform(0, np.pi)
        for s in range(length):
            px, py = round(x + s * np.cos(ang)), round(y + s * np.sin(ang))
            if 0 <= px < nx and 0 <= py < ny:
                xs.append(px)
                ys.append(py)
                es.append(float(np.exp(rng.uniform(np.log(1500.0), np.log(30000.0)))))
    return np.array(xs, int), np.array(ys, int), np.array(es)


def _expose(
    cfg: SimConfig,
    model_e: np.ndarray,
    bias_cols: np.ndarray,
    rng: np.random.Generator,
    cosmics: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Noise on expected electrons, then ADU as a camera writes them (uint16)."""
    rn = cfg.read_noise
    z = rng.standard_normal(model_e.shape)
    e = model_e + np.sqrt(model_e + rn * rn) * z  # Gaussian regime: photon and read noise at once
    low = model_e < cfg.poisson_exact_below
    if low.any():
        e[low] = rng.poisson(model_e[low]) + rn * z[low]
    if cosmics is not None and cosmics[0].size:
        np.add.at(e, (cosmics[1], cosmics[0]), cosmics[2])
    adu = e / cfg.gain
    adu += bias_cols[None, :]
    np.rint(adu, out=adu)
    np.clip(adu, 0, cfg.saturation_adu, out=adu)
    return adu.astype(np.uint16)


def _sexagesimal(ra_deg: float, dec_deg: float, sep: str = " ") -> tuple[str, str]:
    ra = Angle(ra_deg, u.deg).to_string(unit=u.hour, sep=sep, precision=2, pad=True)
    dec = Angle(dec_deg, u.deg).to_string(
        unit=u.deg, sep=sep, precision=1, pad=True, alwayssign=True
    )
    return ra, dec


def _header(cfg: SimConfig, kind: str, t_start: Time, exptime: float) -> fits.Header:
    lat, lon, elev = cfg.site
    h = fits.Header()
    h["DATE-OBS"] = (t_start.utc.isot, "UTC start of exposure")
    h["EXPTIME"] = (float(exptime), "[s] exposure time")
    h["EXPOSURE"] = (float(exptime), "[s] exposure time")
    h["GAIN"] = (cfg.gain, "[e-/ADU] sensor gain")
    h["EGAIN"] = (cfg.gain, "[e-/ADU] electrons per ADU")
    h["RDNOISE"] = (cfg.read_noise, "[e-] read noise")
    h["IMAGETYP"] = (kind, "type of image")
    h["FILTER"] = (cfg.filter, "filter")
    h["XBINNING"] = (1, "binning in x")
    h["YBINNING"] = (1, "binning in y")
    h["CCD-TEMP"] = (cfg.ccd_temp, "[C] sensor temperature")
    h["SET-TEMP"] = (cfg.ccd_temp, "[C] sensor set temperature")
    h["SATURATE"] = (int(cfg.saturation_adu), "[ADU] saturation level")
    h["TELESCOP"] = (f"tsphot-sim {cfg.aperture_diameter_m:g} m", "telescope")
    h["INSTRUME"] = ("tsphot-sim CCD", "camera")
    h["SITELAT"] = (float(lat), "[deg] site latitude")
    h["SITELONG"] = (float(lon), "[deg] site longitude, east positive")
    h["SITEELEV"] = (float(elev), "[m] site elevation")
    return h


def _write(path: Path, data: np.ndarray, header: fits.Header) -> None:
    hdu = fits.PrimaryHDU(data=data, header=header)  # uint16 -> BITPIX 16, BZERO 32768
    hdu.writeto(path, overwrite=True, output_verify="exception")


# ----------------------------------------------------------------------------------------------
# Science frames (one function of the frame index, so frames can run in parallel processes)


@dataclass
class _FrameContext:
    cfg: SimConfig
    out: Path
    noise_entropy: int
    noise_stream: int
    xk: np.ndarray
    yk: np.ndarray
    flux_nos: np.ndarray
    sig_s: np.ndarray
    fwhm: np.ndarray
    airmass: np.ndarray
    rot: np.ndarray
    dxy: np.ndarray
    t_start: Time
    flat: np.ndarray
    dark_e: np.ndarray
    bias_cols: np.ndarray
    sky_plane: np.ndarray
    centre_px: tuple[float, float]
    unst_idx: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))
    unst_amp: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


_CTX: _FrameContext | None = None  # set in the parent before forking workers


def _science_frame(
    ctx: _FrameContext, k: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, float]]]:
    """Render, expose and write science frame k; return its true fluxes, peaks and cosmics."""
    cfg = ctx.cfg
    nx, ny = cfg.size
    nrng = _rng(ctx.noise_entropy, _SCIENCE, ctx.noise_stream, k)
    n_st = ctx.xk.shape[1]
    flux_e = ctx.flux_nos[k] * (1.0 + ctx.sig_s[k] * nrng.standard_normal(n_st))
    model = np.zeros((ny, nx))
    _add_stars(model, ctx.xk[k], ctx.yk[k], flux_e, float(ctx.fwhm[k]), cfg.moffat_beta)
    model += (cfg.sky_zenith * cfg.exptime * ctx.airmass[k]) * ctx.sky_plane
    if cfg.sky_pattern_rms > 0:  # its own stream: switching it on changes no other draw
        prng = _rng(ctx.noise_entropy, _PATTERN, ctx.noise_stream, k)
        pattern = sky_pattern(prng, (ny, nx), cfg.sky_pattern_scale)
        np.clip(model + cfg.sky_pattern_rms * pattern, 0.0, None, out=model)
    model *= ctx.flat
    model += ctx.dark_e
    # noiseless peak (ADU, with bias) near each star, for the saturation flag
    peak = np.zeros(n_st)
    ix, iy = np.rint(ctx.xk[k]).astype(int), np.rint(ctx.yk[k]).astype(int)
    for i in np.flatnonzero((ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)):
        ya, yb = max(iy[i] - 2, 0), min(iy[i] + 3, ny)
        xa, xb = max(ix[i] - 2, 0), min(ix[i] + 3, nx)
        peak[i] = (model[ya:yb, xa:xb] / cfg.gain + ctx.bias_cols[None, xa:xb]).max()
    cos = _cosmics(cfg, nrng, cfg.exptime)
    cosmic_rows = [(k, int(cx), int(cy), float(ce)) for cx, cy, ce in zip(*cos, strict=True)]
    model = _with_unstable(
        model, ctx.unst_idx, ctx.unst_amp, ctx.noise_entropy, _SCIENCE, ctx.noise_stream, k
    )
    data = _expose(cfg, model, ctx.bias_cols, nrng, cos)
    t_start = ctx.t_start[k]
    h = _header(cfg, "Light Frame", t_start, cfg.exptime)
    wcs = _wcs(cfg, ctx.centre_px, float(ctx.rot[k]), ctx.dxy[k])
    pointing = wcs.pixel_to_world(*ctx.centre_px)
    ra_s, dec_s = _sexagesimal(*cfg.ra_dec)
    h["OBJECT"] = (cfg.object_name, "target field")
    h["RA"] = (float(pointing.ra.deg), "[deg] pointing RA (frame centre)")
    h["DEC"] = (float(pointing.dec.deg), "[deg] pointing Dec (frame centre)")
    h["OBJCTRA"] = (ra_s, "[h m s] object RA")
    h["OBJCTDEC"] = (dec_s, "[d m s] object Dec")
    h["AIRMASS"] = (round(float(ctx.airmass[k]), 6), "airmass at mid-exposure")
    if cfg.write_wcs:
        h["MJD-OBS"] = (float(t_start.utc.mjd), "[d] MJD (UTC) of exposure start")
        for card in wcs.to_header().cards:
            if card.keyword not in h and card.keyword not in ("MJDREF", "DATEREF"):
                h.append(card)
    _write(ctx.out / f"raw/sci_{k:04d}.fits", data, h)
    return flux_e, peak, cosmic_rows


def _science_frame_forked(k: int) -> tuple[np.ndarray, np.ndarray, list]:
    assert _CTX is not None
    return _science_frame(_CTX, k)


def _run_frames(ctx: _FrameContext, n: int, workers: int) -> list:
    """All science frames, serially or in forked worker processes (identical results).

    Serially as well when the parent runs other threads: forking a threaded process can
    deadlock (a lock held by another thread stays held in the child)."""
    global _CTX
    _CTX = ctx
    try:
        return executors.forked_map(_science_frame_forked, range(n), workers, chunksize=4)
    finally:
        _CTX = None


# ----------------------------------------------------------------------------------------------


def simulate_night(
    out_dir: str | Path, config: SimConfig | None = None, *, workers: int = 1
) -> Truth:
    """Write a simulated night (raw science, bias, dark, flat FITS) and its truth into out_dir."""
    cfg = config if config is not None else SimConfig()
    cfg.validate()
    _configure_offline()
    out = Path(out_dir)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    nx, ny = cfg.size
    n = cfg.n_frames
    centre_px = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    noise_entropy = cfg.seed if cfg.noise_seed is None else cfg.noise_seed
    noise_stream = 0 if cfg.noise_seed is None else 1

    # --- time, airmass, barycentric time -------------------------------------------------
    lat, lon, elev = cfg.site
    loc = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, elev * u.m)
    centre = SkyCoord(cfg.ra_dec[0] * u.deg, cfg.ra_dec[1] * u.deg, frame="icrs")
    t0 = Time(cfg.start_utc, format="isot", scale="utc", location=loc)
    t_start = t0 + (np.arange(n) * cfg.cadence) * u.s
    t_mid = t_start + (cfg.exptime / 2.0) * u.s
    altaz = centre.transform_to(AltAz(obstime=t_mid, location=loc))
    alt = altaz.alt.deg
    if np.any(alt < 10.0):
        raise ValueError("SimConfig: the field is below 10 deg altitude during the night")
    airmass = np.asarray(altaz.secz.value, dtype=float)
    bjd = (t_mid.tdb + t_mid.light_travel_time(centre, kind="barycentric", location=loc)).jd
    jd_mid = t_mid.utc.jd
    frac = np.arange(n) / max(n - 1, 1)
    night_d = (t_mid[-1] - t_mid[0]).to_value(u.day) if n > 1 else cfg.cadence / 86400.0
    date_obs = [t.isot for t in Time(t_start, precision=3)]

    # --- field -----------------------------------------------------------------------------
    frng = _rng(cfg.seed, _FIELD)
    special = _special_stars(cfg, frng)
    sxy = _place_special(cfg, special, frng)
    smag = np.array([s["mag"] for s in special])
    n_field = cfg.n_stars - len(special)
    # The asteroid is placed at mid-night (isolated like the other special stars) and moves
    # at asteroid_rate px/h across the sky (frame-0 pixels).
    t_h = (t_mid - t_mid[0]).to_value(u.hour)
    ast = len(special) - 1 if cfg.asteroid else -1
    ast_sky = np.zeros((n, 2))
    keep_xy, keep_mag = sxy, smag
    if cfg.asteroid:
        ast_sky = sxy[ast] + np.outer(t_h - 0.5 * t_h[-1], cfg.asteroid_rate)
        nx_, ny_ = cfg.size
        if not (
            (ast_sky[:, 0] > 10).all()
            and (ast_sky[:, 0] < nx_ - 11).all()
            and (ast_sky[:, 1] > 10).all()
            and (ast_sky[:, 1] < ny_ - 11).all()
        ):
            raise ValueError("SimConfig: the asteroid's track leaves the frame; lower its rate")
        step = max(1, int(n / 20))
        keep_xy = np.vstack([sxy, ast_sky[::step]])
        # track points count as stars 3 mag fainter than the asteroid: no field star within
        # 6 mag of it (0.4 % of its flux) comes within 25 px, so the truth is its own light
        keep_mag = np.concatenate([smag, np.full(len(ast_sky[::step]), cfg.asteroid_mag + 3)])
        sxy = sxy.copy()
        sxy[ast] = ast_sky[0]
    fxy, fmag = _field_stars(cfg, n_field, keep_xy, keep_mag, frng)
    xy0 = np.vstack([sxy, fxy])
    mags = np.concatenate([smag, fmag])
    names = [s["name"] for s in special] + [f"F{i + 1:04d}" for i in range(n_field)]
    roles = [s["role"] for s in special] + ["field"] * n_field
    comps = [i for i, r in enumerate(roles) if r == "comparison"]
    # The variable is one of the three brightest comparison candidates: a bright variable is the
    # one that would carry weight in an ensemble (and corrupt it); a 1 % variation on a star with
    # several % noise per point is neither measurable nor harmful (its weight is ~1/σ²).
    brightest = sorted(comps, key=lambda i: smag[i])[:3]
    var_comp = int(brightest[frng.integers(len(brightest))])
    var_phase = float(frng.uniform(0, 2 * np.pi))
    var_period = 0.6 * night_d
    flux_s = 10 ** (-0.4 * (mags - cfg.zero_point))  # e-/s above the atmosphere
    n_st = mags.size
    wcs0 = _wcs(cfg, centre_px, 0.0, np.zeros(2))
    sky0 = wcs0.pixel_to_world(xy0[:, 0], xy0[:, 1])

    # --- instrument --------------------------------------------------------------------------
    irng = _rng(cfg.seed, _INSTRUMENT)
    flat, dust = _flat_field(cfg, irng)
    bias_cols = _bias_columns(cfg, irng)
    hot_idx = irng.choice(nx * ny, size=min(cfg.n_hot_pixels, nx * ny), replace=False)
    hot_rate = np.exp(irng.uniform(np.log(2.0), np.log(300.0), hot_idx.size))
    dark_rate = np.full((ny, nx), cfg.dark_current)
    dark_rate.flat[hot_idx] += hot_rate
    dead_idx, dead_resp, unst_idx, unst_amp = _defects(cfg, hot_idx)
    if dead_idx.size:
        flat.flat[dead_idx] *= dead_resp

    # --- weather and pointing --------------------------------------------------------------
    wrng = _rng(cfg.seed, _WEATHER)
    grad_angle = float(wrng.uniform(0, 2 * np.pi))
    clouds = []
    for _ in range(3):
        clouds.append(
            [
                float(wrng.uniform(0.1, 0.9)),
                float(wrng.uniform(0.05, 0.3)),
                float(wrng.uniform(0.01, 0.04)),
            ]
        )
    seeing_phase = float(wrng.uniform(0, 2 * np.pi))
    jitter = wrng.normal(0.0, cfg.jitter, size=(n, 2)) if cfg.jitter > 0 else np.zeros((n, 2))
    jitter[0] = 0.0  # frame 0 defines the reference positions in truth_stars
    transparency = np.ones(n)
    if cfg.clouds:
        for c_frac, depth, width in clouds:
            transparency *= 1.0 - depth * np.exp(-0.5 * ((frac - c_frac) / width) ** 2)
    if cfg.cloud_frame is not None:
        transparency[cfg.cloud_frame] = 0.02
    fwhm = cfg.fwhm_start + (cfg.fwhm_end - cfg.fwhm_start) * frac
    fwhm = fwhm * (1.0 + cfg.seeing_wiggle * np.sin(2 * np.pi * 1.7 * frac + seeing_phase))
    flipped = (frac >= 0.5) if cfg.meridian_flip else np.zeros(n, bool)
    rot = cfg.rotation_deg * frac + np.where(flipped, 180.0, 0.0)
    dxy = np.outer(frac, cfg.drift) + jitter + np.where(flipped[:, None], cfg.flip_offset, 0.0)

    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    proj = (xx - centre_px[0]) * np.cos(grad_angle) + (yy - centre_px[1]) * np.sin(grad_angle)
    extent = proj.max() - proj.min()
    sky_plane = 1.0 + cfg.sky_gradient * proj / extent
    del xx, yy, proj

    # --- astrophysics ------------------------------------------------------------------------
    a_rs, inc = _solve_orbit(cfg)
    t0_inst = t_mid[0] + frac_to_span(cfg.transit_mid_frac, t_mid)
    t0_bjd = float(
        (t0_inst.tdb + t0_inst.light_travel_time(centre, kind="barycentric", location=loc)).jd
    )
    astro = np.ones((n, n_st))
    astro[:, 0] = _transit_model(cfg, bjd - t0_bjd, a_rs, inc)
    if cfg.asteroid:
        astro[:, ast] = _asteroid_lightcurve(cfg, t_h)
    astro[:, var_comp] = 1.0 + cfg.variable_comp_amp * np.sin(
        2 * np.pi * (bjd - bjd[0]) / var_period + var_phase
    )
    field_vars = _field_variables(cfg, roles, mags, xy0, bjd, night_d)
    for v in field_vars:
        astro[:, v["star"]] = v["factor"]
    sig_s = (
        scintillation_sigma(airmass, cfg.aperture_diameter_m, elev, cfg.exptime)
        if cfg.scintillation
        else np.zeros(n)
    )

    # --- science frames ------------------------------------------------------------------------
    th = np.deg2rad(rot)
    u0, v0 = xy0[:, 0] - centre_px[0], xy0[:, 1] - centre_px[1]
    xk = np.cos(th)[:, None] * u0 - np.sin(th)[:, None] * v0 + centre_px[0] + dxy[:, :1]
    yk = np.sin(th)[:, None] * u0 + np.cos(th)[:, None] * v0 + centre_px[1] + dxy[:, 1:]
    if cfg.asteroid:  # its sky position moves; the frame's rotation and drift apply as to stars
        ua, va = ast_sky[:, 0] - centre_px[0], ast_sky[:, 1] - centre_px[1]
        xk[:, ast] = np.cos(th) * ua - np.sin(th) * va + centre_px[0] + dxy[:, 0]
        yk[:, ast] = np.sin(th) * ua + np.cos(th) * va + centre_px[1] + dxy[:, 1]
    ext = 10 ** (-0.4 * cfg.extinction * airmass)
    flux_nos = flux_s[None, :] * cfg.exptime * ext[:, None] * transparency[:, None] * astro
    flux_e = np.empty_like(flux_nos)
    peak_adu = np.zeros((n, n_st))
    cosmic_rows: list[tuple[int, int, int, float]] = []
    sci_files: list[str] = []
    dark_e = dark_rate * cfg.exptime
    ctx = _FrameContext(
        cfg=cfg,
        out=out,
        noise_entropy=noise_entropy,
        noise_stream=noise_stream,
        xk=xk,
        yk=yk,
        flux_nos=flux_nos,
        sig_s=sig_s,
        fwhm=fwhm,
        airmass=airmass,
        rot=rot,
        dxy=dxy,
        t_start=t_start,
        flat=flat,
        dark_e=dark_rate * cfg.exptime,
        bias_cols=bias_cols,
        sky_plane=sky_plane,
        centre_px=centre_px,
        unst_idx=unst_idx,
        unst_amp=unst_amp,
    )
    for k, (fe, pk, cr) in enumerate(_run_frames(ctx, n, workers)):
        flux_e[k] = fe
        peak_adu[k] = pk
        cosmic_rows.extend(cr)
        sci_files.append(f"raw/sci_{k:04d}.fits")
    ix = np.clip(np.rint(xk).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(yk).astype(int), 0, ny - 1)
    on = (xk > -0.5) & (xk < nx - 0.5) & (yk > -0.5) & (yk < ny - 0.5)
    flat_at = np.where(on, flat[iy, ix], np.nan)
    proj_k = (xk - centre_px[0]) * np.cos(grad_angle) + (yk - centre_px[1]) * np.sin(grad_angle)
    sky_at = (cfg.sky_zenith * cfg.exptime * airmass)[:, None] * (
        1.0 + cfg.sky_gradient * proj_k / extent
    )
    saturated = peak_adu >= cfg.saturation_adu

    # --- calibration frames ----------------------------------------------------------------
    t_end = t_start[-1] + cfg.cadence * u.s
    cal_files: dict[str, list[str]] = {"bias": [], "dark": [], "flat": []}
    zero = np.zeros((ny, nx))
    for i in range(cfg.n_bias):
        nrng = _rng(noise_entropy, _CALIB, noise_stream, 0, i)
        model = _with_unstable(zero, unst_idx, unst_amp, noise_entropy, _CALIB, noise_stream, 0, i)
        data = _expose(cfg, model, bias_cols, nrng, None)
        name = f"raw/bias_{i:03d}.fits"
        _write(out / name, data, _header(cfg, "Bias Frame", t_end + (600 + 5 * i) * u.s, 0.0))
        cal_files["bias"].append(name)
    for i in range(cfg.n_dark):
        nrng = _rng(noise_entropy, _CALIB, noise_stream, 1, i)
        tt = t_end + (900 + (cfg.exptime + 5) * i) * u.s
        cos = _cosmics(cfg, nrng, cfg.exptime)
        model = _with_unstable(
            dark_e, unst_idx, unst_amp, noise_entropy, _CALIB, noise_stream, 1, i
        )
        data = _expose(cfg, model, bias_cols, nrng, cos)
        name = f"raw/dark_{i:03d}.fits"
        _write(out / name, data, _header(cfg, "Dark Frame", tt, cfg.exptime))
        cal_files["dark"].append(name)
    flat_levels = []
    for i in range(cfg.n_flat):
        nrng = _rng(noise_entropy, _CALIB, noise_stream, 2, i)
        level = cfg.flat_level_e * (1.1 - 0.2 * i / max(cfg.n_flat - 1, 1))  # fading twilight
        flat_levels.append(level)
        model = level * flat + dark_rate * cfg.flat_exptime
        tt = t0 - (3600 - 30 * i) * u.s
        cos = _cosmics(cfg, nrng, cfg.flat_exptime)
        model = _with_unstable(model, unst_idx, unst_amp, noise_entropy, _CALIB, noise_stream, 2, i)
        data = _expose(cfg, model, bias_cols, nrng, cos)
        h = _header(cfg, "Flat Field", tt, cfg.flat_exptime)
        name = f"raw/flat_{i:03d}.fits"
        _write(out / name, data, h)
        cal_files["flat"].append(name)

    # --- truth -------------------------------------------------------------------------------
    roles_map = {
        "target": 0,
        "comparisons": comps,
        "variable_comp": var_comp,
        "check": names.index("CHK"),
        "saturated": names.index("SAT"),
        "asteroid": ast,
    }
    stars_t = Table()
    stars_t["id"] = np.arange(n_st, dtype=np.int32)
    stars_t["name"] = names
    stars_t["role"] = roles
    stars_t["x"] = xy0[:, 0]
    stars_t["y"] = xy0[:, 1]
    stars_t["mag"] = mags
    stars_t["flux_e_per_s"] = flux_s
    stars_t["is_variable"] = np.arange(n_st) == var_comp
    var_type_col = ["none"] * n_st
    var_ptp_col = np.zeros(n_st)
    var_period_col = np.zeros(n_st)
    var_type_col[var_comp] = "sinusoid"
    var_ptp_col[var_comp] = 2 * cfg.variable_comp_amp
    var_period_col[var_comp] = var_period
    for v in field_vars:
        stars_t["is_variable"][v["star"]] = True
        var_type_col[v["star"]] = v["type"]
        var_ptp_col[v["star"]] = v["ptp"]
        var_period_col[v["star"]] = v["period_d"]
    stars_t["var_type"] = np.array(var_type_col)  # none | sinusoid | eclipsing
    stars_t["var_ptp"] = var_ptp_col  # peak-to-peak fraction of the flux
    stars_t["var_period_d"] = var_period_col
    stars_t["ra"] = sky0.ra.deg
    stars_t["dec"] = sky0.dec.deg
    for col, unit in (("x", "pix"), ("y", "pix"), ("flux_e_per_s", "electron / s")):
        stars_t[col].unit = unit
    stars_t["ra"].unit = stars_t["dec"].unit = "deg"
    stars_t.meta["comments"] = [
        "x, y: 0-based pixel position on frame 0; flux above the atmosphere (airmass 0)",
        "mag = zero_point - 2.5 log10(flux_e_per_s)",
    ]

    f32 = np.float32
    frames_t = Table()
    frames_t["frame"] = np.repeat(np.arange(n, dtype=np.int32), n_st)
    frames_t["star"] = np.tile(np.arange(n_st, dtype=np.int32), n)
    frames_t["x"] = xk.ravel().astype(f32)
    frames_t["y"] = yk.ravel().astype(f32)
    frames_t["flux_e"] = flux_e.ravel()
    frames_t["flux_noscint_e"] = flux_nos.ravel()
    frames_t["astro_factor"] = astro.ravel().astype(f32)
    frames_t["sky_e_per_pix"] = sky_at.ravel().astype(f32)
    frames_t["dark_e_per_pix"] = np.full(n * n_st, cfg.dark_current * cfg.exptime, f32)
    frames_t["read_noise_e"] = np.full(n * n_st, cfg.read_noise, f32)
    frames_t["scint_frac"] = np.repeat(sig_s, n_st).astype(f32)
    frames_t["flat"] = flat_at.ravel().astype(f32)
    frames_t["fwhm"] = np.repeat(fwhm, n_st).astype(f32)
    frames_t["airmass"] = np.repeat(airmass, n_st).astype(f32)
    frames_t["transparency"] = np.repeat(transparency, n_st).astype(f32)
    frames_t["jd_utc_mid"] = np.repeat(jd_mid, n_st)
    frames_t["peak_adu"] = peak_adu.ravel().astype(f32)
    frames_t["saturated"] = saturated.ravel()
    for col, unit in (
        ("x", "pix"),
        ("y", "pix"),
        ("flux_e", "electron"),
        ("flux_noscint_e", "electron"),
        ("sky_e_per_pix", "electron"),
        ("dark_e_per_pix", "electron"),
        ("read_noise_e", "electron"),
        ("fwhm", "pix"),
        ("jd_utc_mid", "d"),
        ("peak_adu", "adu"),
    ):
        frames_t[col].unit = unit
    frames_t.meta["comments"] = [
        "flux_e: true electrons of the star in the exposure (extinction, clouds, transit or",
        "variability, scintillation realisation); flux_noscint_e: the same before scintillation",
        "sky_e_per_pix, dark_e_per_pix: expected electrons per pixel at the star, before the flat",
        "flat: true flat (mean 1) at the star; peak_adu: noiseless peak pixel with bias",
        "saturated: peak_adu >= saturation_adu; flat is NaN when the star is off the frame",
    ]

    exp_t = Table()
    exp_t["frame"] = np.arange(n, dtype=np.int32)
    exp_t["file"] = sci_files
    exp_t["date_obs"] = date_obs
    exp_t["jd_utc_start"] = t_start.utc.jd
    exp_t["jd_utc_mid"] = jd_mid
    exp_t["bjd_tdb_mid"] = bjd
    exp_t["airmass"] = airmass
    exp_t["altitude_deg"] = alt
    exp_t["fwhm"] = fwhm
    exp_t["transparency"] = transparency
    exp_t["sky_e_per_pix_centre"] = cfg.sky_zenith * cfg.exptime * airmass
    exp_t["scint_frac"] = sig_s
    exp_t["dx"] = dxy[:, 0]
    exp_t["dy"] = dxy[:, 1]
    exp_t["rotation_deg"] = rot
    exp_t["flipped"] = flipped
    exp_t["n_cosmic_pix"] = np.bincount(
        np.array([r[0] for r in cosmic_rows], dtype=int), minlength=n
    ).astype(np.int32)
    exp_t.meta["comments"] = [
        "frame-k position of a star at frame-0 position p0:",
        "R(rotation_deg) (p0 - c) + c + (dx, dy),",
        "with c the frame centre ((nx-1)/2, (ny-1)/2) and R a counter-clockwise rotation in (x, y)",
    ]

    cos_t = Table(
        rows=cosmic_rows if cosmic_rows else None,
        names=("frame", "x", "y", "electrons"),
        dtype=(np.int32, np.int32, np.int32, np.float64),
    )

    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(flat.astype(np.float32), name="FLAT"),
            fits.ImageHDU(dark_rate.astype(np.float32), name="DARK_RATE"),
            fits.ImageHDU(bias_cols.astype(np.float64), name="BIAS_COLUMNS"),
        ]
    )
    hdul.writeto(out / MAPS_FITS, overwrite=True)

    transit = {
        "t0_bjd_tdb": t0_bjd,
        "t0_jd_utc": float(t0_inst.utc.jd),
        "depth": cfg.transit_depth,
        "rp_rs": math.sqrt(cfg.transit_depth),
        "duration_h": cfg.transit_duration_h,
        "a_rs": a_rs,
        "inc_deg": inc,
        "impact_param": cfg.impact_param,
        "period_d": cfg.period_d,
        "ecc": 0.0,
        "w_deg": 90.0,
        "ld_law": "quadratic",
        "ld": list(LD_COEFFS),
        "model": "batman (Kreidberg 2015), evaluated at bjd_tdb_mid of each frame",
        "min_astro_factor": float(astro[:, 0].min()),
    }
    meta = {
        "format": "tsphot-synthetic-truth",
        "version": 1,
        "config": cfg.to_dict(),
        "size": [nx, ny],
        "frame_centre": list(centre_px),
        "gain": cfg.gain,
        "read_noise": cfg.read_noise,
        "exptime": cfg.exptime,
        "saturation_adu": cfg.saturation_adu,
        "zero_point": cfg.zero_point,
        "roles": roles_map,
        "transit": transit,
        "asteroid": {
            "star": ast,
            "mag": cfg.asteroid_mag,
            "rate_px_per_h": list(cfg.asteroid_rate),
            "period_h": cfg.asteroid_period_h,
            "amplitude_mag": cfg.asteroid_amplitude,
            "t_ref_jd_utc": float(jd_mid[0]),
            "formula": "flux factor 10**(-0.4 dmag), dmag = A/2 cos(2 ph) + 0.15 A/2 cos(ph + 1), "
            "ph = 2 pi (jd - t_ref) * 24 / period_h; the track is in frame-0 sky pixels "
            "(truth_frames x, y give it in each frame's pixels); no trailing within an exposure",
        }
        if cfg.asteroid
        else None,
        "variable": {
            "star": var_comp,
            "amplitude": cfg.variable_comp_amp,
            "period_d": var_period,
            "phase_rad": var_phase,
            "t_ref_bjd_tdb": float(bjd[0]),
            "formula": "1 + amplitude * sin(2 pi (bjd - t_ref) / period + phase)",
        },
        "field_variables": [{k: v for k, v in fv.items() if k != "factor"} for fv in field_vars],
        "scintillation": {
            "enabled": cfg.scintillation,
            "formula": "1.5 * 0.09 * D_cm**(-2/3) * X**1.75 * exp(-h_m / 8000) / sqrt(2 t_s)",
            "factor": 1.5,
            "D_cm": 100.0 * cfg.aperture_diameter_m,
            "h_m": elev,
            "t_s": cfg.exptime,
            "references": "Young 1967, AJ 72, 747; Osborn et al. 2015, MNRAS 452, 1707",
        },
        "sky": {
            "model": "sky_zenith * exptime * airmass * (1 + gradient * proj / extent)",
            "gradient": cfg.sky_gradient,
            "gradient_angle_deg": math.degrees(grad_angle),
            "extent_px": float(extent),
        },
        "clouds": [{"night_frac": c[0], "depth": c[1], "width_frac": c[2]} for c in clouds]
        if cfg.clouds
        else [],
        "psf": {
            "model": "moffat",
            "beta": cfg.moffat_beta,
            "rendering": "pixel-integrated; stamps renormalised to sum exactly to flux_e",
        },
        "flat": {
            "normalisation": "mean",
            "vignetting": cfg.flat_vignetting,
            "dust": [{"x": d[0], "y": d[1], "radius": d[2], "depth": d[3]} for d in dust],
            "levels_e": flat_levels,
            "exptime": cfg.flat_exptime,
        },
        "bias": {"level_adu": cfg.bias_level, "column_rms_adu": cfg.bias_column_amp},
        "sky_pattern": {
            "rms_e": cfg.sky_pattern_rms,
            "scale_px": cfg.sky_pattern_scale,
            "model": "added to the sky (before the flat) in every science frame, drawn anew: "
            "unit white noise smoothed by a Gaussian of sigma scale_px (normalised to unit "
            "variance per pixel) times rms_e",
        },
        "hot_pixels": {
            "x": (hot_idx % nx).tolist(),
            "y": (hot_idx // nx).tolist(),
            "rate_e_per_s": hot_rate.tolist(),
        },
        "dead_pixels": {
            "x": (dead_idx % nx).tolist(),
            "y": (dead_idx // nx).tolist(),
            "response": dead_resp.tolist(),
            "note": "the pixel's flat value is multiplied by its response (FLAT in truth_maps)",
        },
        "unstable_pixels": {
            "x": (unst_idx % nx).tolist(),
            "y": (unst_idx // nx).tolist(),
            "jump_e": unst_amp.tolist(),
            "note": "jump_e electrons added in a random half of all exposures (two-level noise)",
        },
        "noise": {
            "poisson_exact_below": cfg.poisson_exact_below,
            "note": "N(m, m + RN^2) above the threshold, Poisson(m) + N(0, RN^2) below",
        },
        "wcs_frame0": dict(wcs0.to_header()),
        "files": {"science": sci_files, **cal_files, "toml": "tsphot.toml"},
    }
    meta["wcs_frame0"] = {k: v for k, v in meta["wcs_frame0"].items() if k not in ("MJDREF",)}
    (out / TRUTH_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    stars_t.write(out / STARS_ECSV, format="ascii.ecsv", overwrite=True)
    _write_ecsv_fast(frames_t, out / FRAMES_ECSV)
    exp_t.write(out / EXPOSURES_ECSV, format="ascii.ecsv", overwrite=True)
    cos_t.write(out / COSMICS_ECSV, format="ascii.ecsv", overwrite=True)
    _write_toml(out / "tsphot.toml", cfg, xy0[0], sky0[0], xy0[roles_map["check"]])
    return Truth(
        out_dir=out,
        config=SimConfig.from_dict(meta["config"]),
        meta=json.loads(json.dumps(meta)),
        stars=stars_t,
        frames=frames_t,
        exposures=exp_t,
        cosmics=cos_t,
    )


def _write_ecsv_fast(table: Table, path: Path) -> None:
    """Write a numeric table as ECSV, byte-identical to astropy's writer but ~3x faster."""
    buf = io.StringIO()
    table[:0].write(buf, format="ascii.ecsv")
    cols = [np.asarray(table[c]).astype(str) for c in table.colnames]
    body = "\n".join(" ".join(row) for row in zip(*cols, strict=True))
    path.write_text(buf.getvalue() + body + ("\n" if len(table) else ""))


def frac_to_span(frac: float, t_mid: Time) -> u.Quantity:
    """Time from the first to the fraction frac of the night (first to last mid-exposure)."""
    if len(t_mid) < 2:
        return 0.0 * u.s
    return frac * (t_mid[-1] - t_mid[0]).to(u.s)


def _write_toml(
    path: Path, cfg: SimConfig, target_xy: np.ndarray, target_sky: SkyCoord, check_xy: np.ndarray
) -> None:
    ap = round(1.75 * cfg.fwhm_end * 2) / 2.0
    inner = math.ceil(ap + 1.5 * cfg.fwhm_end)
    outer = inner + 10
    ra, dec = _sexagesimal(target_sky.ra.deg, target_sky.dec.deg, sep=":")
    lat, lon, elev = cfg.site
    text = f"""# tsphot run settings for this simulated night (paths relative to this file)
frames = ["raw/sci_*.fits"]
bias = ["raw/bias_*.fits"]
dark = ["raw/dark_*.fits"]
flat = ["raw/flat_*.fits"]
# aperture ~1.75 x the worst FWHM ({cfg.fwhm_end:g} px): encloses >= 94 % of the Moffat
# (beta {cfg.moffat_beta:g}) flux even in the worst seeing, so seeing changes barely move the
# differential flux, while the sky noise stays moderate.
aperture = {ap:.1f}
# annulus from aperture + 1.5 FWHM (clear of the star's wings) to 10 px further out
annulus = [{inner:.1f}, {outer:.1f}]
site = [{lat!r}, {lon!r}, {elev!r}]
aperture_diameter_m = {cfg.aperture_diameter_m!r}

[[targets]]
name = "T1"
x = {float(target_xy[0]):.3f}   # 0-based pixel on the first exposure
y = {float(target_xy[1]):.3f}
ra = "{ra}"
dec = "{dec}"

[[checks]]
name = "CHK"
x = {float(check_xy[0]):.3f}
y = {float(check_xy[1]):.3f}
"""
    path.write_text(text)
