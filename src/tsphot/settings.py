"""Settings: one source of truth for every option, from a TOML file and/or flags (flags win)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tsphot.errors import SettingsError

_SEXA = re.compile(r"^[+-]?\d{1,3}[: ]\d{1,2}[: ]\d{1,2}(\.\d*)?$")


class ObjectSpec(BaseModel):
    """A target, comparison or check star, by pixel position (first exposure) or sky position."""

    model_config = ConfigDict(extra="forbid")

    name: str
    x: float | None = Field(None, description="0-based column on the first exposure (px)")
    y: float | None = Field(None, description="0-based row on the first exposure (px)")
    ra: str | float | None = Field(None, description="RA as 'HH:MM:SS.s' or degrees")
    dec: str | float | None = Field(None, description="Dec as '+DD:MM:SS' or degrees")
    mag: float | None = Field(None, description="catalogue magnitude (comparison star only)")
    # A moving target (asteroid, comet): its position at a second time, or its rate.
    jd: float | str | None = Field(
        None,
        description="time of the position: JD (UTC) or ISO UTC; pixels are those of the exposure "
        "nearest that time (default: the first exposure)",
    )
    x2: float | None = Field(None, description="moving target: column at time jd2 (px)")
    y2: float | None = Field(None, description="moving target: row at time jd2 (px)")
    ra2: str | float | None = Field(None, description="moving target: RA at time jd2")
    dec2: str | float | None = Field(None, description="moving target: Dec at time jd2")
    jd2: float | str | None = Field(None, description="time of the second position (JD or ISO)")
    rate_x: float | None = Field(None, description="moving target: rate in x (px/h)")
    rate_y: float | None = Field(None, description="moving target: rate in y (px/h)")
    rate_ra: float | None = Field(None, description="moving target: dRA cos(Dec)/dt (arcsec/h)")
    rate_dec: float | None = Field(None, description="moving target: dDec/dt (arcsec/h)")

    @field_validator("jd", "jd2", mode="before")
    @classmethod
    def _time_to_jd(cls, v: Any) -> Any:
        return None if v is None else parse_time_jd(v)

    @model_validator(mode="after")
    def _has_position(self) -> ObjectSpec:
        if (self.x is None) != (self.y is None):
            raise ValueError(f"object {self.name!r}: give both x and y, or neither")
        if (self.ra is None) != (self.dec is None):
            raise ValueError(f"object {self.name!r}: give both ra and dec, or neither")
        if self.x is None and self.ra is None:
            raise ValueError(
                f"object {self.name!r}: give a pixel position (x, y) or a sky position"
            )
        pairs = (("x2", "y2"), ("ra2", "dec2"), ("rate_x", "rate_y"), ("rate_ra", "rate_dec"))
        given = [a for a, b in pairs if {getattr(self, a), getattr(self, b)} != {None}]
        for a, b in pairs:
            if (getattr(self, a) is None) != (getattr(self, b) is None):
                raise ValueError(f"object {self.name!r}: give both {a} and {b}, or neither")
        if len(given) > 1:
            raise ValueError(
                f"object {self.name!r}: give its motion one way only (second position or rates)"
            )
        if given and given[0] in ("x2", "ra2") and (self.jd is None or self.jd2 is None):
            raise ValueError(
                f"object {self.name!r}: a second position needs both times, jd and jd2"
            )
        if given and given[0] == "x2" and self.x is None:
            raise ValueError(f"object {self.name!r}: x2, y2 need a first pixel position x, y")
        if given and given[0] == "ra2" and self.ra is None:
            raise ValueError(f"object {self.name!r}: ra2, dec2 need a first sky position ra, dec")
        if self.jd is not None and self.jd2 is not None and self.jd2 == self.jd:
            raise ValueError(f"object {self.name!r}: jd and jd2 are the same time")
        return self

    @property
    def moving(self) -> bool:
        """True for a target that moves across the field (second position or rate given)."""
        return any(v is not None for v in (self.x2, self.ra2, self.rate_x, self.rate_ra))


def parse_time_jd(value: Any) -> float:
    """A time as JD (UTC): a number (JD; MJD if below 1e6) or an ISO string (UTC)."""
    if isinstance(value, (int, float)):
        v = float(value)
        return v + 2400000.5 if v < 1e6 else v
    text = str(value).strip()
    try:
        return parse_time_jd(float(text))
    except ValueError:
        pass
    from astropy.time import Time

    try:
        return float(Time(text, scale="utc").jd)
    except ValueError:
        raise ValueError(f"time {text!r}: give a JD number or an ISO UTC time") from None


class TransitSpec(BaseModel):
    """Known planet parameters for the transit fit; t0, rp and a are fitted, the rest fixed."""

    model_config = ConfigDict(extra="forbid")

    t0: float = Field(..., description="predicted mid-transit time, BJD_TDB")
    period: float = Field(..., description="orbital period (d)")
    rp: float = Field(0.1, description="initial Rp/Rs")
    a: float = Field(10.0, description="a/Rs (initial guess; fitted)")
    inc: float = Field(90.0, description="inclination (deg), fixed")
    ecc: float = 0.0
    w: float = 90.0
    u: list[float] = Field(default_factory=lambda: [0.4, 0.25], description="limb darkening")
    limb_dark: str = "quadratic"


EXPORT_FORMATS = ("ecsv", "csv", "fits", "parquet", "aavso-extended", "aavso-exoplanet", "aij")
EXPORT_FORMAT = Literal[
    "ecsv", "csv", "fits", "parquet", "aavso-extended", "aavso-exoplanet", "aij"
]


class Settings(BaseModel):
    """Every setting of a run, with its documented default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    frames: list[str] = Field(
        default_factory=list, description="science exposures: files, folders or globs"
    )
    out: str = Field("tsphot-output", description="output folder")
    bias: list[str] = Field(default_factory=list, description="raw bias frames or one master")
    dark: list[str] = Field(default_factory=list, description="raw dark frames or one master")
    flat: list[str] = Field(default_factory=list, description="raw flat frames or one master")
    library: str | None = Field(
        None,
        description="calibration library folder (tsphot calibrate): masters chosen per frame; "
        "raw calibration frames given or found among the frames are added to it",
    )
    save_calibrated: bool = Field(
        False, description="write calibrated frames (with provenance headers) to OUT/calibrated"
    )
    linearity_limit: float | None = Field(
        None,
        gt=0,
        description="raw ADU above which the camera is not linear: such stars are flagged "
        "like saturated ones, such flats left out",
    )
    lacosmic: bool = Field(
        False, description="clean cosmic rays in the whole frame with L.A.Cosmic (astroscrappy)"
    )
    memory_mb: float = Field(
        512.0, gt=0, description="memory budget for combining calibration frames (MB)"
    )
    profile: str | None = Field(
        None,
        description="instrument profile (generic, maxim, sbig, nina, theskyx, "
        "microobservatory); none: detected from each header",
    )
    targets: list[ObjectSpec] = Field(default_factory=list)
    comps: list[ObjectSpec] = Field(default_factory=list, description="none: choose automatically")
    checks: list[ObjectSpec] = Field(default_factory=list)
    aperture: float | None = Field(None, description="aperture radius (px); none: from the FWHM")
    radii: list[float] = Field(
        default_factory=list,
        description="extra aperture radii (px) measured in the same pass; the one with the lowest "
        "target scatter is chosen and reported",
    )
    annulus: tuple[float, float] | None = Field(None, description="sky annulus radii (px)")
    aperture_fwhm: float | None = Field(
        None, gt=0, description="aperture radius as a multiple of the FWHM (instead of px)"
    )
    radii_fwhm: list[float] = Field(
        default_factory=list,
        description="extra radii as multiples of the FWHM, measured in the same pass; the one "
        "with the lowest target scatter is chosen",
    )
    annulus_fwhm: tuple[float, float] | None = Field(
        None, description="sky annulus radii as multiples of the FWHM"
    )
    aperture_scaling: Literal["fixed", "per_frame"] = Field(
        "fixed",
        description="FWHM-scaled apertures: 'fixed' uses the reference frame's FWHM for the "
        "whole night; 'per_frame' rescales radii and annulus with each frame's FWHM",
    )
    centroid: Literal["com", "windowed", "gauss"] = Field(
        "com",
        description="centroid method: centre of mass, windowed (Gaussian-weighted, as "
        "SExtractor XWIN) or 2-D Gaussian fit; all take the peak nearest the prediction",
    )
    sky_method: Literal["median", "mean", "mode"] = Field(
        "median", description="sky estimator of the sigma-clipped annulus (mode = 3 med - 2 mean)"
    )
    mask_stars: bool = Field(True, description="leave other stars' pixels out of the sky annulus")
    ellipticity: float = Field(0.0, ge=0.0, lt=1.0, description="1 - b/a of the aperture")
    position_angle: float = Field(0.0, description="aperture major axis angle from +x (deg)")
    site: tuple[float, float, float] | None = Field(
        None, description="latitude (deg), east longitude (deg), elevation (m)"
    )
    aperture_diameter_m: float | None = Field(None, gt=0, description="telescope aperture (m)")
    gain: float | None = Field(None, gt=0, description="e-/ADU; overrides the header")
    read_noise: float | None = Field(None, ge=0, description="e-; overrides the header")
    saturation: float | None = Field(None, gt=0, description="ADU; overrides the header")
    max_comps: int = Field(40, ge=2, description="at most this many automatic comparison stars")
    centroid_box: int = Field(11, ge=5, description="centroid search box (px)")
    max_shift: float = Field(3.0, gt=0, description="largest centroid shift from prediction (px)")
    detect_sigma: float = Field(5.0, gt=0, description="source detection threshold (sigma)")
    clean_cosmics: bool = Field(
        False,
        description="replace cosmic-ray pixels inside apertures (for well-sampled PSFs; "
        "undersampled stars can lose core pixels)",
    )
    outlier_sigma: float = Field(
        5.0, gt=0, description="flag light-curve points this many sigma from their neighbours"
    )
    min_transparency: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="leave out frames whose comparison stars give less than this fraction of "
        "the night's median flux (thick cloud); 0 keeps them all",
    )
    thin_cloud: float = Field(
        0.7,
        ge=0,
        le=1,
        description="flag (keep) frames whose comparison stars give less than this fraction of "
        "the night's median flux (thin cloud)",
    )
    max_sky_ratio: float = Field(
        3.0,
        gt=1,
        description="leave out frames whose sky is more than this many times the night's "
        "median (a flashlight, dawn); frames over 1.5x their neighbours or 2x the median are "
        "flagged bright_sky and kept",
    )
    time_keyword_is: Literal["start", "mid", "end"] = "start"
    transit: TransitSpec | None = None
    detrend: list[str] = Field(
        default_factory=lambda: ["airmass"],
        description="candidate detrending terms (airmass, sky, fwhm, x, y, flip); BIC chooses; "
        "a linear trend in time is always a candidate, and a meridian-flip offset whenever the "
        "frames flip",
    )

    @field_validator("detrend")
    @classmethod
    def _known_terms(cls, v: list[str]) -> list[str]:
        known = ("airmass", "sky", "fwhm", "x", "y", "flip")
        bad = [t for t in v if t not in known]
        if bad:
            raise ValueError(f"unknown detrending term(s) {bad}; choose from {list(known)}")
        return v

    all_stars: bool = Field(
        False,
        description="field mode: measure every star detected on the reference frame, give each "
        "a differential light curve, variability indices and candidate flags (field.ecsv)",
    )
    field_snr: float = Field(
        10.0, gt=0, description="field mode: lowest signal-to-noise of a star on the reference"
    )
    field_false_alarm: float = Field(
        1e-3,
        gt=0,
        lt=0.5,
        description="field mode: chance that a constant star is listed as a candidate variable",
    )
    sky_apertures: int | None = Field(
        None,
        ge=0,
        description="empty-sky apertures measured in every frame like stars (no recentring) to "
        "measure the background noise the CCD equation misses (correlated or fixed-pattern "
        "sky); none: 50 in field mode, 30 otherwise (a few ms per frame); 0: off",
    )
    executor: Literal["serial", "processes", "dask"] = Field(
        "processes",
        description="where frames are measured: serial, a local process pool, or Dask (a local "
        "cluster, or the one at `scheduler`)",
    )
    workers: int | None = Field(None, ge=1, description="processes or local Dask workers")
    scheduler: str | None = Field(
        None,
        description="address of a running Dask scheduler (tcp://HOST:PORT); its workers must "
        "see the exposures and the output folder at the same paths",
    )
    resume: bool = Field(
        False, description="reuse the frames already measured by an interrupted run into `out`"
    )
    seed: int = 0
    quiet: bool = False
    # --- products and exports
    exports: list[EXPORT_FORMAT] = Field(
        default_factory=list,
        description="extra formats `run` writes into OUT/exports: " + ", ".join(EXPORT_FORMATS),
    )
    observer_code: str | None = Field(None, description="AAVSO observer code (AAVSO exports)")
    aavso_filter: str | None = Field(
        None, description="AAVSO filter code (V, B, R, I, CV, TG, SR, …); none: from FILTER"
    )
    aavso_chart: str = Field("na", description="AAVSO chart or sequence id of the comp stars")
    obstype: Literal["CCD", "DSLR", "PEP"] = Field("CCD", description="AAVSO OBSTYPE")
    exoplanet_name: str | None = Field(
        None, description="planet name for the AAVSO exoplanet report; none: '<target> b'"
    )
    # --- inputs from AstroImageJ
    aij_apertures: str | None = Field(
        None, description="AstroImageJ .apertures file: targets (T) and comparison stars (C)"
    )
    aij_radec: str | None = Field(
        None, description="AstroImageJ radec file: RA, Dec, ref-star flag, centroid, magnitude"
    )
    masters: str | None = Field(
        None,
        description="a tsphot masters.npz to calibrate with instead of building masters from "
        "bias/dark/flat (used by `tsphot replay`)",
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        from tsphot.ingest import PROFILES

        if v is not None and v not in PROFILES:
            raise ValueError(f"unknown profile {v!r}; choose one of {sorted(PROFILES)}")
        return v

    @field_validator("annulus")
    @classmethod
    def _annulus_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] < v[1]:
            raise ValueError("annulus needs 0 < inner < outer radius")
        return v

    @field_validator("annulus_fwhm")
    @classmethod
    def _annulus_fwhm_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] < v[1]:
            raise ValueError("annulus_fwhm needs 0 < inner < outer")
        return v

    @model_validator(mode="after")
    def _aperture_inside_annulus(self) -> Settings:
        if (
            self.aperture is not None
            and self.annulus is not None
            and self.annulus[0] < self.aperture
        ):
            raise ValueError(
                f"annulus inner radius {self.annulus[0]} px is inside the aperture "
                f"({self.aperture} px): make it larger"
            )
        return self


def _suggest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> None:
    valid = list(model.model_fields)
    for key in data:
        if key not in valid:
            raise SettingsError(f"{where}: unknown setting {key!r}{_suggest(key, valid)}")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a settings TOML file; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    _check_keys(data, Settings, str(path))
    for group in ("targets", "comps", "checks"):
        for i, obj in enumerate(data.get(group, [])):
            _check_keys(obj, ObjectSpec, f"{path} [{group}][{i}]")
    if "transit" in data:
        _check_keys(data["transit"], TransitSpec, f"{path} [transit]")
    base = path.parent
    for key in ("frames", "bias", "dark", "flat"):
        if key in data:
            data[key] = [str(base / p) if not Path(p).is_absolute() else p for p in data[key]]
    if isinstance(data.get("library"), str) and not Path(data["library"]).is_absolute():
        data["library"] = str(base / data["library"])
    for key in ("aij_apertures", "aij_radec", "masters"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    if "out" in data and not Path(data["out"]).is_absolute():
        data["out"] = str(base / data["out"])
    return data


def make_settings(toml: str | Path | None = None, **flags: Any) -> Settings:
    """Build Settings from an optional TOML file and flags; flags that are not None win."""
    data: dict[str, Any] = load_toml(toml) if toml else {}
    for key, value in flags.items():
        if value is None or value == [] or value == ():
            continue
        data[key] = value
    _check_keys(data, Settings, "settings")
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{loc}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None


def parse_object(text: str, default_name: str) -> ObjectSpec:
    """Parse 'NAME=X,Y', 'NAME=HH:MM:SS.s,+DD:MM:SS', 'NAME=X,Y@RA,DEC' or 'X,Y', each with an
    optional '#MAG' catalogue magnitude (comparison stars: sets the magnitude scale).

    A moving target adds its time and motion after ';': 'NAME=X1,Y1@JD1;X2,Y2@JD2' (pixels on
    the exposures nearest each time; JD, MJD or ISO UTC), 'NAME=RA1,DEC1@JD1;RA2,DEC2@JD2',
    'NAME=X,Y@JD;rate=DX,DY' (px/h) or 'NAME=RA,DEC@JD;skyrate=DRA,DDEC' (arcsec/h, DRA
    times cos Dec).
    """
    first, *more = [p.strip() for p in text.split(";")]
    if more:
        return _parse_moving(text, first, more, default_name)
    text, _, mag = text.partition("#")
    name, _, rest = text.rpartition("=")
    name = name.strip() or default_name
    pix, _, sky = rest.partition("@")
    parts = [p.strip() for p in pix.split(",")]
    if len(parts) != 2:
        raise SettingsError(f"object {text!r}: expected 'NAME=X,Y' or 'NAME=HH:MM:SS,+DD:MM:SS'")
    spec: dict[str, Any] = {"name": name}
    if _SEXA.match(parts[0]) or _SEXA.match(parts[1]):
        spec["ra"], spec["dec"] = parts
    else:
        try:
            spec["x"], spec["y"] = float(parts[0]), float(parts[1])
        except ValueError:
            raise SettingsError(f"object {text!r}: {pix!r} is neither pixels nor sky") from None
    if sky:
        radec = [p.strip() for p in sky.split(",")]
        if len(radec) != 2:
            raise SettingsError(f"object {text!r}: sky position after '@' needs RA,DEC")
        spec["ra"], spec["dec"] = radec
    if mag.strip():
        try:
            spec["mag"] = float(mag)
        except ValueError:
            raise SettingsError(
                f"object {text!r}: catalogue magnitude {mag!r} is not a number"
            ) from None
    try:
        return ObjectSpec(**spec)
    except ValidationError as exc:
        raise SettingsError(f"object {text!r}: {exc.errors()[0]['msg']}") from None


def _split_at_time(text: str, part: str) -> tuple[list[str], Any]:
    """'A,B@TIME' → (['A', 'B'], time or None)."""
    pos, _, when = part.partition("@")
    xy = [p.strip() for p in pos.split(",")]
    if len(xy) != 2:
        raise SettingsError(f"object {text!r}: {pos!r} is not a position 'X,Y' or 'RA,DEC'")
    if when and "," in when:
        raise SettingsError(f"object {text!r}: after '@' give a time (JD or ISO), not {when!r}")
    return xy, (when.strip() or None)


def _parse_moving(text: str, first: str, more: list[str], default_name: str) -> ObjectSpec:
    name, _, rest = first.rpartition("=")
    name = name.strip() or default_name
    xy, t1 = _split_at_time(text, rest)
    sky = bool(_SEXA.match(xy[0]) or _SEXA.match(xy[1]))
    spec: dict[str, Any] = {"name": name, "jd": t1}
    try:
        if sky:
            spec["ra"], spec["dec"] = xy
        else:
            spec["x"], spec["y"] = float(xy[0]), float(xy[1])
        if len(more) != 1:
            raise SettingsError(f"object {text!r}: give one motion after ';'")
        key, eq, val = more[0].partition("=")
        if eq and key.strip() in ("rate", "skyrate"):
            parts = [float(v) for v in val.split(",")]
            if len(parts) != 2:
                raise SettingsError(f"object {text!r}: {key.strip()}= needs two numbers")
            which = ("rate_x", "rate_y") if key.strip() == "rate" else ("rate_ra", "rate_dec")
            spec[which[0]], spec[which[1]] = parts
        else:
            xy2, t2 = _split_at_time(text, more[0])
            if t2 is None:
                raise SettingsError(f"object {text!r}: the second position needs '@TIME'")
            spec["jd2"] = t2
            if sky:
                spec["ra2"], spec["dec2"] = xy2
            else:
                spec["x2"], spec["y2"] = float(xy2[0]), float(xy2[1])
    except ValueError as exc:
        raise SettingsError(f"object {text!r}: {exc}") from None
    try:
        return ObjectSpec(**spec)
    except ValidationError as exc:
        raise SettingsError(f"object {text!r}: {exc.errors()[0]['msg']}") from None
