"""The known truth of a simulated night: reading it back, and the noise it predicts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .config import SimConfig
from .psf import enclosed_fraction

__all__ = [
    "Truth",
    "background_excess_var",
    "expected_star_sigma",
    "expected_star_terms",
    "load_truth",
    "scintillation_sigma",
]

TRUTH_JSON = "truth.json"
STARS_ECSV = "truth_stars.ecsv"
FRAMES_ECSV = "truth_frames.ecsv"
EXPOSURES_ECSV = "truth_exposures.ecsv"
COSMICS_ECSV = "truth_cosmics.ecsv"
MAPS_FITS = "truth_maps.fits"


def scintillation_sigma(
    airmass: float | np.ndarray, diameter_m: float, elevation_m: float, exptime_s: float
) -> float | np.ndarray:
    """Fractional scintillation noise: 1.5 x Young (1967) (Osborn et al. 2015 factor)."""
    d_cm = 100.0 * diameter_m
    x = np.asarray(airmass, dtype=float)
    sig = 1.5 * 0.09 * d_cm ** (-2.0 / 3.0) * x**1.75 * np.exp(-elevation_m / 8000.0)
    sig = sig / np.sqrt(2.0 * exptime_s)
    return float(sig) if np.ndim(sig) == 0 else sig


@dataclass
class Truth:
    """Everything known about a simulated night (see the module docs of tsphot.synthetic)."""

    out_dir: Path
    config: SimConfig
    meta: dict[str, Any]  # truth.json
    stars: Table  # truth_stars.ecsv: one row per star
    frames: Table  # truth_frames.ecsv: one row per frame x star
    exposures: Table  # truth_exposures.ecsv: one row per science frame
    cosmics: Table  # truth_cosmics.ecsv: one row per pixel hit by a cosmic ray
    _maps: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def target(self) -> int:
        """Star id of the target T1."""
        return int(self.meta["roles"]["target"])

    @property
    def comparisons(self) -> list[int]:
        """Star ids of the comparison candidates (one of them is variable)."""
        return [int(i) for i in self.meta["roles"]["comparisons"]]

    @property
    def variable_comp(self) -> int:
        """Star id of the variable comparison candidate."""
        return int(self.meta["roles"]["variable_comp"])

    @property
    def check(self) -> int:
        """Star id of the check star CHK."""
        return int(self.meta["roles"]["check"])

    @property
    def saturated_star(self) -> int:
        """Star id of the saturated star SAT."""
        return int(self.meta["roles"]["saturated"])

    @property
    def asteroid(self) -> int | None:
        """Star id of the moving asteroid AST, or None when the night has none."""
        i = self.meta["roles"].get("asteroid", -1)
        return None if i is None or i < 0 else int(i)

    @property
    def transit(self) -> dict[str, Any]:
        """Transit parameters (t0_bjd_tdb, t0_jd_utc, depth, rp, a_rs, inc_deg, period_d, ...)."""
        return self.meta["transit"]

    @property
    def n_frames(self) -> int:
        """Number of science frames."""
        return int(self.config.n_frames)

    def star_frames(self, star: int) -> Table:
        """Rows of truth_frames for one star, in frame order."""
        rows = self.frames[self.frames["star"] == star]
        rows.sort("frame")
        return rows

    def science_files(self) -> list[Path]:
        """Paths of the science frames, in time order."""
        return [self.out_dir / p for p in self.meta["files"]["science"]]

    def maps(self) -> dict[str, np.ndarray]:
        """True instrument maps: FLAT (mean 1), DARK_RATE (e-/s), BIAS_COLUMNS (ADU per column)."""
        if self._maps is None:
            with fits.open(self.out_dir / MAPS_FITS) as hdul:
                self._maps = {h.name: np.array(h.data) for h in hdul[1:]}
        return self._maps

    def transform(
        self, frame: int, x0: np.ndarray, y0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map frame-0 pixel positions to the given frame (the simulator's exact transform)."""
        row = self.exposures[frame]
        cx, cy = self.meta["frame_centre"]
        th = np.deg2rad(float(row["rotation_deg"]))
        u, v = np.asarray(x0, dtype=float) - cx, np.asarray(y0, dtype=float) - cy
        x = np.cos(th) * u - np.sin(th) * v + cx + float(row["dx"])
        y = np.sin(th) * u + np.cos(th) * v + cy + float(row["dy"])
        return x, y


def load_truth(out_dir: str | Path) -> Truth:
    """Read the truth of a simulated night written by simulate_night()."""
    out = Path(out_dir)
    meta = json.loads((out / TRUTH_JSON).read_text())
    return Truth(
        out_dir=out,
        config=SimConfig.from_dict(meta["config"]),
        meta=meta,
        stars=Table.read(out / STARS_ECSV, format="ascii.ecsv"),
        frames=Table.read(out / FRAMES_ECSV, format="ascii.ecsv"),
        exposures=Table.read(out / EXPOSURES_ECSV, format="ascii.ecsv"),
        cosmics=Table.read(out / COSMICS_ECSV, format="ascii.ecsv"),
    )


def expected_star_terms(
    truth: Truth, star: int, radius: float, n_sky_pix: float
) -> dict[str, np.ndarray]:
    """Per-frame 1-sigma noise terms (electrons) of one star's aperture flux at radius r.

    The aperture sum is taken on the bias- and dark-subtracted, flat-fielded image (noiseless
    masters), with the sky estimated as the mean of ``n_sky_pix`` pixels, so the sky, dark,
    read and digitisation terms carry the factor (1 + n_pix / n_sky), n_pix = pi r^2. The flat
    at the star (column ``flat``) scales each term as it does in the calibrated image. Keys:
    photon, sky, dark, read, digitisation, scintillation (sigma_s x aperture flux), total
    (their quadrature sum), and flux_ap (the expected aperture flux itself).
    """
    rows = truth.star_frames(star)
    cfg = truth.config
    f = np.asarray(rows["flat"], dtype=float)
    flux_ap = np.asarray(rows["flux_noscint_e"], dtype=float) * enclosed_fraction(
        radius, np.asarray(rows["fwhm"], dtype=float), cfg.moffat_beta
    )
    n_pix = np.pi * radius**2
    k = 1.0 + n_pix / float(n_sky_pix)
    sky = np.asarray(rows["sky_e_per_pix"], dtype=float)
    dark = np.asarray(rows["dark_e_per_pix"], dtype=float)
    rn = np.asarray(rows["read_noise_e"], dtype=float)
    var = {
        "photon": flux_ap / f,
        "sky": n_pix * k * sky / f,
        "dark": n_pix * k * dark / f**2,
        "read": n_pix * k * rn**2 / f**2,
        "digitisation": n_pix * k * (cfg.gain**2 / 12.0) / f**2,
        "scintillation": (np.asarray(rows["scint_frac"], dtype=float) * flux_ap) ** 2,
    }
    terms = {name: np.sqrt(v) for name, v in var.items()}
    terms["total"] = np.sqrt(sum(var.values()))
    terms["flux_ap"] = flux_ap
    return terms


def expected_star_sigma(truth: Truth, star: int, radius: float, n_sky_pix: float) -> np.ndarray:
    """Per-frame predicted 1-sigma noise (electrons) of one star's aperture flux at radius r."""
    return expected_star_terms(truth, star, radius, n_sky_pix)["total"]


def pattern_kernel(scale: float) -> np.ndarray:
    """1-D Gaussian kernel (sigma = scale px, ±4 sigma) normalised so that the separable 2-D
    smoothing of unit white noise has unit variance per pixel (the simulator's sky pattern)."""
    h = max(int(np.ceil(4.0 * scale)), 1)
    g = np.exp(-0.5 * (np.arange(-h, h + 1) / scale) ** 2)
    return g / np.sqrt(np.sum(g**2))


def background_excess_var(
    truth: Truth,
    radius: float,
    annulus: tuple[float, float],
    n_offsets: int = 4,
    supersample: int = 8,
) -> float:
    """The variance (e²) the sky pattern adds to an empty aperture's sky-subtracted sum beyond
    what the white-pixel CCD equation predicts for it: the background excess to expect.

    Computed from the pattern's exact covariance (``rms² a(dx) a(dy)``, a the kernel's
    autocorrelation) and the white per-pixel variance W (sky + dark + read noise², the night's
    mean at the frame centre). The sum covers the circle with each pixel weighted by its
    covered fraction (``supersample``² points per pixel); the sky is the median of the annulus
    pixels whose centres lie within [r_in, r_out], its variance by the asymptotic formula for
    correlated Gaussian values, σ² Σ_ij arcsin(ρ_ij) / n². Achieved: Var(sum) + A² Var(median)
    − 2 A Cov(sum, median); predicted as the pipeline does: A σ̂² (1 + A π / (2 n)) with σ̂²
    the expected sample variance of the annulus pixels and A = π r². Averaged over
    ``n_offsets``² sub-pixel centre positions.
    """
    cfg = truth.config
    rms = float(cfg.sky_pattern_rms)
    exp = truth.exposures
    white = float(
        np.mean(np.asarray(exp["sky_e_per_pix_centre"], float))
        + cfg.dark_current * cfg.exptime
        + cfg.read_noise**2
    )
    k = pattern_kernel(cfg.sky_pattern_scale)
    acf = np.correlate(k, k, mode="full")  # lags -(len-1) .. len-1
    lag0 = len(k) - 1
    r_in, r_out = annulus
    half = int(np.ceil(r_out)) + 1
    off = np.arange(-half, half + 1)
    gy, gx = np.meshgrid(off, off, indexing="ij")
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    area = np.pi * radius**2

    def cov(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
        dx = np.abs(ax[:, None] - bx[None, :])
        dy = np.abs(ay[:, None] - by[None, :])
        far = (dx > lag0) | (dy > lag0)
        c = acf[lag0 + np.clip(dx, 0, lag0)] * acf[lag0 + np.clip(dy, 0, lag0)]
        return np.where(far, 0.0, rms * rms * c)

    excess = []
    for ox in (np.arange(n_offsets) + 0.5) / n_offsets - 0.5:
        for oy in (np.arange(n_offsets) + 0.5) / n_offsets - 0.5:
            # covered fraction of each pixel by the circle centred at (ox, oy)
            px = gx[..., None, None] + sub[None, None, None, :] - ox
            py = gy[..., None, None] + sub[None, None, :, None] - oy
            w = ((px**2 + py**2) <= radius**2).mean(axis=(2, 3)).ravel()
            d2 = ((gx - ox) ** 2 + (gy - oy) ** 2).ravel()
            ring = (d2 >= r_in**2) & (d2 <= r_out**2)
            ap = w > 0
            ax, ay, wa = gx.ravel()[ap], gy.ravel()[ap], w[ap]
            rx, ry = gx.ravel()[ring], gy.ravel()[ring]
            n = int(ring.sum())
            var_sum = wa @ cov(ax, ay, ax, ay) @ wa + white * np.sum(wa**2)
            c_ring = cov(rx, ry, rx, ry)
            total = rms * rms + white
            rho = np.clip((c_ring + white * np.eye(n)) / total, -1.0, 1.0)
            var_med = total * np.sum(np.arcsin(rho)) / n**2
            cov_sm = float(np.sum(wa @ cov(ax, ay, rx, ry))) / n
            achieved = var_sum + area**2 * var_med - 2.0 * area * cov_sm
            s2 = total - (np.sum(c_ring) + white * n) / n**2
            predicted = area * s2 * (1.0 + area * np.pi / (2.0 * n))
            excess.append(achieved - predicted)
    return float(np.mean(excess))
