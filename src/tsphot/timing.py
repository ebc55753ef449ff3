"""Timing and geometry: mid-exposure JD_UTC, BJD_TDB, HJD_UTC and airmass, all offline.

Every conversion goes through astropy ``Time``, ``SkyCoord`` and ``EarthLocation``:

- ``BJD_TDB = t.tdb + t.light_travel_time(coord, 'barycentric')`` (Eastman, Siverd & Gaudi 2010,
  PASP 122, 935), with the observatory position, the built-in ERFA ephemeris (no download) and
  Earth orientation from the IERS tables shipped in ``astropy-iers-data``.
- ``HJD_UTC = t.utc + t.light_travel_time(coord, 'heliocentric')``: the heliocentric date kept in
  UTC, as most older software reports it.
- Airmass from the astropy (refraction-free) altitude. The default model is Young (1994, Applied
  Optics 33, 1108), which takes the true (unrefracted) zenith angle; ``'pickering2002'``
  (Pickering 2002, DIO 12, 3) takes the apparent altitude, which is the true altitude plus
  refraction from astropy's own model at standard pressure and temperature; ``'secz'`` is the
  plane-parallel sec z. They agree to better than 0.5 % above 30 degrees of altitude.

Nothing here reaches the network: :func:`configure_offline` runs before each conversion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import astropy.units as u
import numpy as np
from astropy.coordinates import AltAz, Angle, EarthLocation, SkyCoord
from astropy.time import Time, TimeDelta
from numpy.typing import ArrayLike

__all__ = [
    "airmass",
    "altitude",
    "bjd_tdb",
    "combine_date_time",
    "configure_offline",
    "hjd_utc",
    "mid_exposure_jd_utc",
    "mid_exposure_time",
    "parse_coord",
    "parse_site",
]

TimeIs = Literal["start", "mid", "end"]
AirmassModel = Literal["young1994", "pickering2002", "secz"]

# Fraction of the exposure between the time stamp and mid-exposure, by what the stamp marks.
_MID_OFFSET = {"start": 0.5, "mid": 0.0, "end": -0.5}

# An ISO-8601 date-time with an optional UTC offset: 'Z', '+HH', '+HHMM' or '+HH:MM'.
_ISO_RE = re.compile(
    r"^\s*(?P<date>\d{4}-\d{1,2}-\d{1,2})[T ](?P<time>\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d*)?)?)"
    r"\s*(?P<tz>Z|UTC|[+-]\d{2}(?::?\d{2})?)?\s*$",
    re.IGNORECASE,
)
# The pre-2000 FITS date, 'DD/MM/YY' (years 1900-1999, FITS standard 4.0 section 9.1.1).
_OLD_DATE_RE = re.compile(r"^\s*(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{2})\s*$")
# Sexagesimal with blanks between the fields: '+42 36 36.00', '02 04 10.3'.
_SPACED_RE = re.compile(r"^[+-]?\s*\d+(\s+\d+(\.\d*)?){1,2}$")
_ISO_DATE_RE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}\s*$")


def configure_offline() -> None:
    """Turn off every astropy download (IERS auto-download, remote data); idempotent."""
    from astropy.utils import data, iers

    # IERS-A/B tables then come from the astropy-iers-data package. Beyond their end (a few
    # months past the package date) UT1-UTC is extrapolated with a warning instead of an error:
    # a 1 s error in UT1 moves the observatory by < 0.5 km, i.e. < 2 microseconds of light time.
    iers.conf.auto_download = False
    iers.conf.iers_degraded_accuracy = "warn"
    data.conf.allow_internet = False


def _to_float(value: object) -> float | None:
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _angle_deg(value: object, unit: u.Unit, what: str) -> float:
    number = _to_float(value)
    if number is not None:
        return number
    text = str(value).strip()
    try:
        # Angle reads '+42 36 36.00', '-110:53:00', '42d36m36s', '02h04m10.3s'.
        if _SPACED_RE.match(text):
            text = re.sub(r"\s+", ":", text)
        return float(Angle(text, unit=unit).deg)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} {value!r} is neither a number nor a sexagesimal angle") from exc


def parse_site(
    lat: float | str,
    lon: float | str,
    elev: float | str = 0.0,
    *,
    west_positive: bool = False,
) -> EarthLocation:
    """Observatory position from latitude and longitude (deg or sexagesimal) and elevation (m)."""
    lat_deg = _angle_deg(lat, u.deg, "latitude")
    lon_deg = _angle_deg(lon, u.deg, "longitude")
    if west_positive:
        lon_deg = -lon_deg
    if not -90.0 <= lat_deg <= 90.0:
        raise ValueError(f"latitude {lat!r} is outside -90..90 degrees")
    if not -360.0 <= lon_deg <= 360.0:
        raise ValueError(f"longitude {lon!r} is outside -360..360 degrees")
    height = _to_float(elev)
    if height is None:
        raise ValueError(f"elevation {elev!r} is not a number of metres")
    return EarthLocation.from_geodetic(
        lon=lon_deg * u.deg, lat=lat_deg * u.deg, height=height * u.m
    )


def parse_coord(ra: float | str, dec: float | str) -> SkyCoord:
    """ICRS position from RA ('HH:MM:SS.s', 'HH MM SS' or deg) and Dec ('+DD:MM:SS' or deg)."""
    ra_num = _to_float(ra)
    ra_deg = ra_num if ra_num is not None else _angle_deg(ra, u.hourangle, "RA")
    dec_deg = _angle_deg(dec, u.deg, "Dec")
    if not 0.0 <= ra_deg < 360.0 + 1e-9:
        raise ValueError(f"RA {ra!r} is outside 0..24 h (0..360 deg)")
    if not -90.0 <= dec_deg <= 90.0:
        raise ValueError(f"Dec {dec!r} is outside -90..+90 deg")
    return SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")


def combine_date_time(date_obs: str, time_obs: str | None) -> str:
    """ISO date-time string from a DATE-OBS date ('YYYY-MM-DD' or 'DD/MM/YY') and TIME-OBS/UT."""
    date = str(date_obs).strip()
    old = _OLD_DATE_RE.match(date)
    if old:
        date = f"19{old['y']}-{int(old['m']):02d}-{int(old['d']):02d}"
    if "T" in date or time_obs is None or str(time_obs).strip() == "":
        return date
    if not _ISO_DATE_RE.match(date):
        raise ValueError(f"DATE-OBS {date_obs!r} is not a date (YYYY-MM-DD or DD/MM/YY)")
    tod = str(time_obs).strip()
    if ":" not in tod:
        # Some cameras write TIME-OBS/UT as 'HH MM SS.s'.
        tod = re.sub(r"\s+", ":", tod)
    return f"{date}T{tod}"


def _split_offset(text: str) -> tuple[str, float]:
    """ISO string without its UTC offset, and the offset in hours (local = UTC + offset)."""
    match = _ISO_RE.match(text)
    if match is None:
        old = _OLD_DATE_RE.match(text)
        if old or _ISO_DATE_RE.match(text):
            raise ValueError(
                f"{text!r} is a date without a time of day; combine it with TIME-OBS/UT "
                "(tsphot.timing.combine_date_time)"
            )
        raise ValueError(f"{text!r} is not an ISO date and time (YYYY-MM-DDThh:mm:ss[.s][±hhmm])")
    tz = (match["tz"] or "").upper()
    hours = 0.0
    if tz not in ("", "Z", "UTC"):
        sign = -1.0 if tz[0] == "-" else 1.0
        digits = tz[1:].replace(":", "")
        hh, mm = int(digits[:2]), int(digits[2:] or 0)
        if hh > 14 or mm >= 60:
            raise ValueError(f"{text!r} has an impossible UTC offset {tz!r}")
        hours = sign * (hh + mm / 60.0)
    # Normalise 'hh:mm' to 'hh:mm:ss' and single digits, which astropy's isot parser insists on.
    date = "-".join(
        f"{int(p):0{4 if i == 0 else 2}d}" for i, p in enumerate(match["date"].split("-"))
    )
    parts = match["time"].split(":")
    hh, mm = int(parts[0]), int(parts[1])
    ss = parts[2] if len(parts) > 2 else "0"
    sec_int, _, frac = ss.partition(".")
    return f"{date}T{hh:02d}:{mm:02d}:{int(sec_int):02d}" + (f".{frac}" if frac else ""), hours


def mid_exposure_time(
    date_obs: str | Sequence[str],
    exptime_s: float | ArrayLike,
    *,
    time_is: TimeIs = "start",
) -> Time:
    """Mid-exposure instant (UTC ``Time``) from DATE-OBS string(s) and exposure time(s) in s."""
    if time_is not in _MID_OFFSET:
        raise ValueError(f"time_is must be one of {sorted(_MID_OFFSET)}, not {time_is!r}")
    scalar = isinstance(date_obs, str)
    texts = [date_obs] if scalar else [str(d) for d in date_obs]
    split = [_split_offset(t) for t in texts]
    wall = np.array([s[0] for s in split])
    offset_h = np.array([s[1] for s in split])
    exptime = np.broadcast_to(np.asarray(exptime_s, dtype=float), wall.shape)
    if not np.all(np.isfinite(exptime)) or np.any(exptime < 0):
        raise ValueError(f"exposure time {exptime_s!r} s must be finite and >= 0")
    # Local wall-clock time minus the offset is UTC; do the calendar arithmetic on a scale with
    # no leap seconds (TAI), then read the shifted calendar date as UTC.
    if np.any(offset_h != 0.0):
        local = Time(wall, format="isot", scale="tai", precision=9)
        shifted = local - TimeDelta(offset_h * u.hour)
        wall = shifted.isot
    start = Time(wall, format="isot", scale="utc")
    mid = start + TimeDelta(_MID_OFFSET[time_is] * exptime * u.s)
    return mid[0] if scalar else mid


def mid_exposure_jd_utc(
    date_obs: str | Sequence[str],
    exptime_s: float | ArrayLike,
    *,
    time_is: TimeIs = "start",
) -> float | np.ndarray:
    """Mid-exposure JD (UTC, days) from DATE-OBS (UTC or local time with a UTC offset) and s."""
    return mid_exposure_time(date_obs, exptime_s, time_is=time_is).utc.jd


def _as_utc(jd_utc: ArrayLike | Time, location: EarthLocation | None) -> Time:
    if isinstance(jd_utc, Time):
        t = jd_utc.utc
        return Time(t, location=location) if location is not None else t
    jd = np.asarray(jd_utc, dtype=float)
    if not np.all(np.isfinite(jd)):
        raise ValueError("JD_UTC values must be finite")
    # Two-part JD keeps the fraction exact to float64 resolution of the day fraction.
    whole = np.floor(jd)
    return Time(whole, jd - whole, format="jd", scale="utc", location=location)


def bjd_tdb(
    jd_utc: ArrayLike | Time, coord: SkyCoord, location: EarthLocation
) -> float | np.ndarray:
    """BJD_TDB (days): TDB plus the barycentric light-travel time to the observatory."""
    configure_offline()
    t = _as_utc(jd_utc, location)
    ltt = t.light_travel_time(coord, kind="barycentric", location=location)
    return (t.tdb + ltt).jd


def hjd_utc(
    jd_utc: ArrayLike | Time, coord: SkyCoord, location: EarthLocation
) -> float | np.ndarray:
    """HJD_UTC (days): UTC plus the heliocentric light-travel time to the observatory."""
    configure_offline()
    t = _as_utc(jd_utc, location)
    ltt = t.light_travel_time(coord, kind="heliocentric", location=location)
    return (t.utc + ltt).utc.jd


def altitude(
    jd_utc: ArrayLike | Time,
    coord: SkyCoord,
    location: EarthLocation,
    *,
    refraction: bool = False,
) -> np.ndarray:
    """Altitude of a target (deg): true, or apparent with a standard atmosphere if refraction."""
    configure_offline()
    t = _as_utc(jd_utc, location)
    if refraction:
        # Standard atmosphere for the refraction model of ERFA (astropy's AltAz): 1010 hPa, 10 C,
        # 50 % humidity, 0.55 micron.
        frame = AltAz(
            obstime=t,
            location=location,
            pressure=1010 * u.hPa,
            temperature=10 * u.deg_C,
            relative_humidity=0.5,
            obswl=0.55 * u.micron,
        )
    else:
        frame = AltAz(obstime=t, location=location, pressure=0 * u.hPa)
    return np.asarray(coord.transform_to(frame).alt.to_value(u.deg))


def _airmass_from_altitude(alt_deg: ArrayLike, model: str) -> np.ndarray:
    """Air mass from altitude in degrees: true altitude for secz/young1994, apparent otherwise."""
    alt = np.asarray(alt_deg, dtype=float)
    out = np.full(alt.shape, np.nan)
    up = alt > 0.0
    if model == "secz":
        out[up] = 1.0 / np.sin(np.radians(alt[up]))
    elif model == "young1994":
        # Young 1994, Applied Optics 33, 1108, eq. 3; c = cos(true zenith angle).
        c = np.sin(np.radians(alt[up]))
        num = 1.002432 * c**2 + 0.148386 * c + 0.0096467
        den = c**3 + 0.149864 * c**2 + 0.0102963 * c + 0.000303978
        out[up] = num / den
    elif model == "pickering2002":
        # Pickering 2002, DIO 12, 3: X = 1 / sin(h + 244 / (165 + 47 h^1.1)), h apparent altitude.
        h = alt[up]
        out[up] = 1.0 / np.sin(np.radians(h + 244.0 / (165.0 + 47.0 * h**1.1)))
    else:
        raise ValueError(
            f"airmass model must be 'young1994', 'pickering2002' or 'secz', not {model!r}"
        )
    return out


def airmass(
    jd_utc: ArrayLike | Time,
    coord: SkyCoord,
    location: EarthLocation,
    *,
    model: AirmassModel = "young1994",
) -> np.ndarray:
    """Relative air mass (dimensionless) of a target; NaN below the horizon (see module doc)."""
    if model not in ("young1994", "pickering2002", "secz"):
        raise ValueError(
            f"airmass model must be 'young1994', 'pickering2002' or 'secz', not {model!r}"
        )
    alt = altitude(jd_utc, coord, location, refraction=model == "pickering2002")
    return _airmass_from_altitude(alt, model)
