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
        return self


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
    optional '#MAG' catalogue magnitude (comparison stars: sets the magnitude scale)."""
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
