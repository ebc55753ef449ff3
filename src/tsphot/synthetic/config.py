"""Configuration of the simulated night: every effect switchable and sized."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SimConfig"]


@dataclass
class SimConfig:
    """Settings of one simulated night; defaults: a realistic night with a 0.4 m telescope."""

    n_frames: int = 150
    size: tuple[int, int] = (1024, 1024)  # (width, height) = (nx, ny)
    n_stars: int = 300  # all stars, including target, comparisons, check and saturated star
    seed: int = 1
    exptime: float = 60.0  # s
    cadence: float = 75.0  # s between exposure starts
    gain: float = 1.6  # e-/ADU
    read_noise: float = 9.0  # e-
    bias_level: float = 1000.0  # ADU
    bias_column_amp: float = 3.0  # ADU rms of the fixed, zero-mean column pattern
    dark_current: float = 0.05  # e-/s/pixel
    n_hot_pixels: int = 200  # fixed positions, 2-300 e-/s (log-uniform)
    n_dead_pixels: int = 0  # flat response 0-0.3 of their neighbours' (own random stream)
    n_unstable_pixels: int = 0  # two-level (telegraph) pixels: +60-300 e- in a random half
    sky_zenith: float = 150.0  # e-/s/pixel at airmass 1; proportional to airmass; linear gradient
    sky_gradient: float = 0.1  # fractional change across the frame
    # A spatially correlated background component (e- rms per pixel, 0: off) drawn anew in
    # every science frame and absent from the calibration frames, so calibration leaves it:
    # white noise smoothed by a Gaussian of sky_pattern_scale px (sigma). Its covariance is
    # known exactly (truth.sky_pattern_covariance), so is the excess noise it adds to an
    # aperture beyond the white-pixel CCD equation (truth.background_excess_var).
    sky_pattern_rms: float = 0.0
    sky_pattern_scale: float = 2.0
    flat_vignetting: float = 0.15  # fractional falloff to the corners
    flat_dust: int = 3  # dust donuts
    flat_pixel_rms: float = 0.01  # pixel-to-pixel response
    fwhm_start: float = 3.5  # px; seeing changes smoothly through the night
    fwhm_end: float = 4.5
    moffat_beta: float = 3.0
    drift: tuple[float, float] = (8.0, -5.0)  # px total pointing drift over the night (x, y)
    rotation_deg: float = 0.3  # field rotation over the night (deg), about the frame centre
    meridian_flip: bool = False  # 180-degree rotation about the centre at mid-night (+ offset)
    extinction: float = 0.15  # mag/airmass
    clouds: bool = True  # a few transparency dips (thin cloud), common to all stars
    cloud_frame: int | None = None  # index of one frame of pure cloud (transparency 0.02)
    scintillation: bool = True  # Young (1967) with the Osborn et al. (2015) factor 1.5
    aperture_diameter_m: float = 0.4
    site: tuple[float, float, float] = (31.68, -110.88, 2300.0)  # lat, lon (east+) deg, elev m
    ra_dec: tuple[float, float] = (31.0425, 46.6878)  # field centre (deg)
    # The field crosses the meridian at mid-night of the default 150 x 75 s night (airmass
    # 1.09 -> 1.036 -> 1.09).
    start_utc: str = "2017-12-20T02:00:00"
    cosmic_rays: bool = True  # a few per frame (cosmic_rate per megapixel per minute)
    saturation_adu: int = 65535  # 16-bit; the star "SAT" is saturated
    target_mag: float = 11.0  # magnitude of the target T1
    transit_depth: float = 0.01  # (Rp/Rs)^2; quadratic limb darkening u = (0.4, 0.25) (batman)
    transit_duration_h: float = 2.0  # first to fourth contact
    transit_mid_frac: float = 0.5  # mid-time as a fraction of the night
    variable_comp_amp: float = 0.01  # one comparison varies sinusoidally, period 0.6 x night
    write_wcs: bool = True  # TAN WCS in headers
    pixel_scale: float = 1.0  # arcsec/px
    n_bias: int = 10
    n_dark: int = 5
    n_flat: int = 10
    flat_level_e: float = 30000.0  # mean level of the flats (they fade from 1.1x to 0.9x this)
    # Beyond the brief: documented extras.
    zero_point: float = 21.3  # magnitude giving 1 e-/s above the atmosphere (0.4 m, V)
    n_comps: int = 8  # comparison stars within (-0.8, +1.0) mag of the target, isolated
    mag_range: tuple[float, float] = (8.0, 17.0)  # field stars, N(<m) proportional to 10^(0.3 m)
    jitter: float = 0.15  # px rms guiding jitter per frame, on top of the drift
    seeing_wiggle: float = 0.03  # fractional smooth FWHM oscillation on top of the linear trend
    flip_offset: tuple[float, float] = (4.0, -3.0)  # px pointing offset after the flip
    cosmic_rate: float = 5.0  # mean cosmic-ray hits per megapixel per minute of exposure
    period_d: float = 2.15  # orbital period (days); a/Rs follows from the duration
    impact_param: float = 0.3
    noise_seed: int | None = None  # seed of the noise only (None: from seed); same field
    poisson_exact_below: float = 1000.0  # expected e- below which Poisson is drawn exactly
    flat_exptime: float = 2.0  # s
    ccd_temp: float = -10.0  # deg C
    filter: str = "V"
    object_name: str = "SIMFIELD"
    # A moving asteroid (star "AST", role "asteroid", the last special star), off by default.
    asteroid: bool = False
    asteroid_mag: float = 12.0  # mean magnitude
    asteroid_rate: tuple[float, float] = (40.0, -15.0)  # px/h across the sky (frame-0 pixels)
    asteroid_period_h: float = 1.5  # rotation period (h)
    asteroid_amplitude: float = 0.3  # peak-to-peak of the double-peaked rotation curve (mag)
    # Field variables (off with 0): field stars made sinusoidal or eclipsing (contact-binary
    # shape), drawn from their own random stream so switching them on changes no other star.
    n_field_variables: int = 0
    field_var_ptp: tuple[float, float] = (0.005, 0.1)  # peak-to-peak fraction, log-uniform
    field_var_period: tuple[float, float] = (0.25, 1.0)  # in units of the night's length
    field_var_mag: tuple[float, float] = (9.5, 15.5)  # magnitudes of the stars chosen
    field_var_margin: float = 40.0  # px: variables are chosen this far inside the frame edges

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimConfig:
        """Rebuild a configuration from to_dict() output (unknown keys are an error)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ValueError(f"unknown SimConfig keys: {sorted(unknown)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)

    def validate(self) -> None:
        """Raise ValueError if a setting is out of range."""
        nx, ny = self.size
        checks = [
            (self.n_frames >= 1, "n_frames must be >= 1"),
            (nx >= 128 and ny >= 128, "size must be at least (128, 128)"),
            (self.exptime > 0 and self.cadence >= self.exptime, "need 0 < exptime <= cadence"),
            (self.gain > 0 and self.read_noise >= 0, "gain must be > 0, read_noise >= 0"),
            (0 < self.saturation_adu <= 65535, "saturation_adu must be in (0, 65535]"),
            (self.fwhm_start > 0 and self.fwhm_end > 0, "FWHM must be positive"),
            (self.moffat_beta > 1, "moffat_beta must be > 1"),
            (0 <= self.transit_depth < 0.25, "transit_depth must be in [0, 0.25)"),
            (self.n_stars >= self.n_comps + 3, "n_stars must include target, comps, check, SAT"),
            (self.n_field_variables >= 0, "n_field_variables must be >= 0"),
            (0 < self.field_var_ptp[0] <= self.field_var_ptp[1] < 1, "field_var_ptp in (0, 1)"),
            (0 < self.field_var_period[0] <= self.field_var_period[1], "field_var_period > 0"),
            (
                self.cloud_frame is None or 0 <= self.cloud_frame < self.n_frames,
                "cloud_frame must be a frame index",
            ),
            (self.asteroid_period_h > 0, "asteroid_period_h must be positive"),
            (self.sky_pattern_rms >= 0, "sky_pattern_rms must be >= 0"),
            (self.sky_pattern_scale > 0, "sky_pattern_scale must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SimConfig: {msg}")
