"""Ingest: find exposures, read and normalise their headers, read their pixels."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from tsphot.errors import InputError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")

# Header keyword synonyms, in order of preference. A profile may override any of them.
DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "exptime": ("EXPTIME", "EXPOSURE", "EXP_TIME", "ITIME"),
    "date_obs": ("DATE-OBS", "DATE_OBS", "UT-OBS"),
    "time_obs": ("TIME-OBS", "UT", "UTSTART", "UT-START"),
    "gain": ("GAIN", "EGAIN", "CCDGAIN"),
    "read_noise": ("RDNOISE", "READNOIS", "RON", "READNOISE"),
    "filter": ("FILTER", "FILTER1", "FILTNAME"),
    "imagetyp": ("IMAGETYP", "FRAMETYP", "FRAME", "OBSTYPE"),
    "object": ("OBJECT",),
    "site_lat": ("SITELAT", "LAT-OBS", "OBSLAT", "LATITUDE"),
    "site_lon": ("SITELONG", "LONG-OBS", "OBSLONG", "LONGITUD", "LONGITUDE"),
    "site_elev": ("SITEELEV", "ALT-OBS", "OBSALT", "OBSGEO-H", "ELEVATIO"),
    "ra": ("RA", "OBJCTRA", "RA_OBJ", "TELRA"),
    "dec": ("DEC", "OBJCTDEC", "DEC_OBJ", "TELDEC"),
    "airmass": ("AIRMASS", "SECZ"),
    "saturation": ("SATURATE", "DATAMAX", "SATLEVEL"),
    "pedestal": ("PEDESTAL",),
    "xbin": ("XBINNING", "CCDXBIN", "BINX"),
    "ybin": ("YBINNING", "CCDYBIN", "BINY"),
    "ccd_temp": ("CCD-TEMP", "CCDTEMP", "CAMTEMP"),
    "aperture_diameter": ("APTDIA",),
    "set_temp": ("SET-TEMP", "SETTEMP"),
    "picttype": ("PICTTYPE",),
}

# IMAGETYP values as camera software writes them, lower-cased, to the kind of frame.
# MaxIm DL: 'Light Frame', 'Bias Frame', 'Dark Frame', 'Flat Frame'; TheSkyX/SBIG:
# 'Flat Field'; N.I.N.A.: 'LIGHT', 'BIAS', 'DARK', 'FLAT', 'DARKFLAT'; IRAF: 'zero', 'object'.
_KIND_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("darkflat", ("dark flat", "darkflat", "flat dark", "flatdark", "flat-dark", "dark-flat")),
    ("bias", ("bias", "zero", "offset")),
    ("dark", ("dark",)),
    ("flat", ("flat", "sky flat", "dome flat", "twilight")),
    ("light", ("light", "object", "science", "target", "snapshot", "tricolor")),
)
# SBIG PICTTYPE: 0 unknown, 1 light, 2 bias, 3 dark, 4 flat.
_PICTTYPE = {1: "light", 2: "bias", 3: "dark", 4: "flat"}


@dataclass(frozen=True)
class Profile:
    """An instrument profile: how one camera software writes its headers."""

    name: str
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)
    lon_west_positive: bool = False
    ignore: tuple[str, ...] = ()  # keywords this software writes with another meaning
    time_is: str = "start"
    default_gain: float | None = None
    default_read_noise: float | None = None
    default_saturation: float | None = None

    def keys(self, what: str) -> tuple[str, ...]:
        """Header keywords holding one quantity, this profile's first."""
        keys = self.keywords.get(what, ()) + DEFAULT_KEYWORDS.get(what, ())
        return tuple(k for k in keys if k not in self.ignore)


PROFILES: dict[str, Profile] = {
    "generic": Profile("generic"),
    # TheSkyX (SBIGFITSEXT keywords) writes SITELONG positive west, EGAIN, PEDESTAL and
    # PICTTYPE (the Wallace data README and its headers).
    "theskyx": Profile("theskyx", keywords={"gain": ("EGAIN",)}, lon_west_positive=True),
    # MaxIm DL (ASCOM): IMAGETYP 'Light Frame' ... 'Flat Frame', EGAIN in e-/ADU, DATAMAX as the
    # saturation level, SITELONG sexagesimal from the ASCOM telescope (east positive).
    "maxim": Profile(
        "maxim",
        keywords={"gain": ("EGAIN",), "saturation": ("DATAMAX", "SATURATE")},
    ),
    # SBIG CCDOps / SBIG driver: SBIGFITSEXT keywords, EGAIN, PICTTYPE, PEDESTAL; older versions
    # split the date into DATE-OBS (day) and TIME-OBS.
    "sbig": Profile("sbig", keywords={"gain": ("EGAIN",)}),
    # N.I.N.A.: GAIN is the camera's gain *setting* (e.g. 139 on a ZWO), not e-/ADU; EGAIN is
    # e-/ADU when the driver knows it. IMAGETYP 'LIGHT'/'DARK'/'BIAS'/'FLAT'; SITELONG decimal,
    # east positive.
    "nina": Profile(
        "nina",
        keywords={"gain": ("EGAIN",), "date_obs": ("DATE-OBS", "DATE-UTC")},
        ignore=("GAIN", "DATE-LOC"),
    ),
    # MicroObservatory: DATE-OBS is local time with offset, LONGITUD unsigned west, no gain.
    "microobservatory": Profile(
        "microobservatory",
        keywords={"date_obs": ("DATE-OBS",)},
        lon_west_positive=True,
        default_saturation=4095.0,
    ),
}


def detect_profile(header: fits.Header) -> Profile:
    """Choose the instrument profile that matches a header (CREATOR / SWCREATE)."""
    creator = str(header.get("CREATOR", "")) + " " + str(header.get("SWCREATE", ""))
    low = creator.lower()
    if "microobservatory" in low:
        return PROFILES["microobservatory"]
    if "theskyx" in low or "thesky" in low:
        return PROFILES["theskyx"]
    if "maxim" in low:
        return PROFILES["maxim"]
    if "n.i.n.a" in low or low.split()[:1] == ["nina"]:
        return PROFILES["nina"]
    if "ccdops" in low or "sbig" in low:
        return PROFILES["sbig"]
    return PROFILES["generic"]


def frame_kind(imagetyp: Any, picttype: Any = None) -> str:
    """Kind of frame from IMAGETYP (or SBIG PICTTYPE): bias, dark, flat, darkflat, light or ''."""
    text = " ".join(str(imagetyp or "").lower().replace("_", " ").split())
    for kind, words in _KIND_WORDS:
        if any(w in text for w in words):
            return kind
    try:
        return _PICTTYPE.get(int(picttype), "")
    except (TypeError, ValueError):
        return ""


@dataclass
class FrameInfo:
    """Everything known about one exposure from its header, before its pixels are read."""

    path: str
    index: int = -1
    status: str = "ok"
    reason: str = ""
    shape: tuple[int, int] = (0, 0)
    exptime: float = float("nan")
    date_obs: str = ""
    jd_utc_mid: float = float("nan")
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    pedestal: float = 0.0
    filter: str = ""
    imagetyp: str = ""
    object: str = ""
    site: tuple[float, float, float] | None = None
    ra_dec: tuple[float, float] | None = None
    airmass: float | None = None
    binning: tuple[int, int] = (1, 1)
    kind: str = ""  # bias, dark, flat, darkflat, light or '' (from IMAGETYP / PICTTYPE)
    ccd_temp: float | None = None  # deg C: the set point if given, else the measured one
    sections: dict[str, str] = field(default_factory=dict)  # BIASSEC, DATASEC, TRIMSEC
    has_wcs: bool = False
    profile: str = "generic"
    assumed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for run.json."""
        return asdict(self)


def expand_inputs(items: list[str]) -> list[str]:
    """Expand files, folders and globs into a sorted list of unique paths."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                str(f)
                for f in p.iterdir()
                if f.name.lower().endswith(FITS_SUFFIXES) and f.is_file()
            )
            if not found:
                raise InputError(f"{item}: folder holds no FITS files (*.fits, *.fit, *.fits.gz)")
            out.extend(found)
        elif any(c in item for c in "*?["):
            found = sorted(glob.glob(item))
            if not found:
                raise InputError(f"{item}: pattern matches no file")
            out.extend(found)
        else:
            out.append(item)  # a missing file is reported per frame, not fatal here
    seen: set[str] = set()
    unique = []
    for f in out:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _first(header: fits.Header, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in header and header[k] not in (None, ""):
            return k, header[k]
    return None, None


def _angle(value: Any, hours: bool = False) -> float:
    from astropy.coordinates import Angle

    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    unit = "hourangle" if hours else "deg"
    return float(Angle(text.replace(" ", ":"), unit=unit).deg)


class _TimeLater(Exception):
    """The mid-exposure time is left for read_headers to convert with the others."""


def read_headers(
    paths: list[str],
    overrides: dict[str, Any] | None = None,
    progress: Callable[[Any], None] | None = None,
) -> list[FrameInfo]:
    """read_header of each path (the same results, in the same order), times converted at once."""
    from tsphot import timing

    overrides = overrides or {}
    infos = []
    for p in paths:
        infos.append(read_header(p, overrides, _time=False))
        if progress is not None:
            progress(p)
    # astropy's Time costs more per call than reading a header: one call per time convention
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        if info.status == "ok":
            time_is = overrides.get("time_is") or PROFILES[info.profile].time_is
            groups.setdefault(time_is, []).append(i)
    for time_is, idx in groups.items():
        try:
            jd = timing.mid_exposure_jd_utc(
                [infos[i].date_obs for i in idx],
                [infos[i].exptime for i in idx],
                time_is=time_is,  # type: ignore[arg-type]
            )
        except (ValueError, TypeError):
            jd = None  # some frame's time is unreadable: each frame alone names it
        for k, i in enumerate(idx):
            if jd is None:
                infos[i] = read_header(paths[i], overrides)
            else:
                infos[i].jd_utc_mid = float(jd[k])
    return infos


def read_header(
    path: str, overrides: dict[str, Any] | None = None, *, _time: bool = True
) -> FrameInfo:
    """Read and normalise one exposure's header; problems become its status and reason."""
    from tsphot import timing

    overrides = overrides or {}
    info = FrameInfo(path=path)
    if not os.path.exists(path):
        info.status, info.reason = "missing", f"{path}: file not found"
        return info
    header: Any = None
    try:
        header = _fast_image_header(path)
    except OSError:
        pass  # astropy's reading below names the problem
    if header is not None:
        info.shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    else:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # Unscaled: the pixels are read (a truncated file fails here, not while
                # measuring) but not converted to floats, which would cost more than the rest.
                with fits.open(path, memmap=False, do_not_scale_image_data=True) as hdul:
                    hdu = next((h for h in hdul if h.data is not None and h.data.ndim == 2), None)
                    if hdu is None:
                        info.status, info.reason = "bad_file", _no_image(path, hdul)
                        return info
                    header = hdu.header
                    info.shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        except (OSError, ValueError, TypeError) as exc:
            info.status = "bad_file"
            info.reason = f"{path}: {_unreadable(path, exc, caught)}"
            return info
    named = overrides.get("profile")
    profile = PROFILES[named] if named in PROFILES else detect_profile(header)
    info.profile = profile.name

    k, v = _first(header, profile.keys("exptime"))
    if v is None:
        info.status = "bad_header"
        info.reason = (
            f"{path}: no exposure time (none of {', '.join(profile.keys('exptime'))}); "
            "add EXPTIME (seconds) to the header, or remove the file"
        )
        return info
    try:
        info.exptime = float(v)
    except (TypeError, ValueError):
        info.status = "bad_header"
        info.reason = (
            f"{path}: {k} = {v!r} is not a number of seconds; fix the keyword or remove the file"
        )
        return info
    if not (np.isfinite(info.exptime) and info.exptime >= 0):  # 0 s: a bias frame
        info.status = "bad_header"
        info.reason = (
            f"{path}: {k} = {v!r}; an exposure time must be a positive number of seconds: "
            "fix the keyword or remove the file"
        )
        return info

    k, date = _first(header, profile.keys("date_obs"))
    if date is None:
        info.status = "bad_header"
        info.reason = (
            f"{path}: no observation time (none of {', '.join(profile.keys('date_obs'))}); add "
            "DATE-OBS (UTC, e.g. 2024-05-01T03:04:05.6) to the header, or remove the file"
        )
        return info
    info.date_obs = str(date)
    if "T" not in info.date_obs:
        _, tod = _first(header, profile.keys("time_obs"))
        if tod is not None:
            info.date_obs = f"{info.date_obs}T{tod}"
    time_is = overrides.get("time_is") or profile.time_is
    try:
        if not _time:  # read_headers converts every frame's time at once
            raise _TimeLater
        info.jd_utc_mid = float(
            timing.mid_exposure_jd_utc(info.date_obs, info.exptime, time_is=time_is)
        )
    except _TimeLater:
        pass
    except (ValueError, TypeError) as exc:
        info.status = "bad_header"
        info.reason = (
            f"{path}: {k} = {date!r} is not a date and time ({exc}); write it as UTC in ISO "
            "8601 (e.g. 2024-05-01T03:04:05.6), or remove the file"
        )
        return info

    for attr in ("gain", "read_noise", "saturation"):
        if overrides.get(attr) is not None:
            setattr(info, attr, float(overrides[attr]))
            continue
        _, v = _first(header, profile.keys(attr))
        if v is not None:
            try:
                setattr(info, attr, float(v))
            except (TypeError, ValueError):
                pass
        if getattr(info, attr) is None:
            default = getattr(profile, f"default_{attr}")
            if default is not None:
                setattr(info, attr, default)
                info.assumed.append(f"{attr}={default} (profile {profile.name})")
    if info.saturation is None:
        bitpix = header.get("BITPIX", 16)
        info.saturation = 65535.0 if bitpix in (16, -32, 32) else float(2 ** abs(bitpix) - 1)
        info.assumed.append(f"saturation={info.saturation} ADU (BITPIX)")
    _, ped = _first(header, profile.keys("pedestal"))
    info.pedestal = float(ped) if ped is not None else 0.0
    info.filter = str(_first(header, profile.keys("filter"))[1] or "")
    info.imagetyp = str(_first(header, profile.keys("imagetyp"))[1] or "")
    info.object = str(_first(header, profile.keys("object"))[1] or "")
    _, xb = _first(header, profile.keys("xbin"))
    _, yb = _first(header, profile.keys("ybin"))
    info.binning = (int(xb or 1), int(yb or 1))
    info.kind = frame_kind(info.imagetyp, _first(header, profile.keys("picttype"))[1])
    for what in ("set_temp", "ccd_temp"):
        _, t = _first(header, profile.keys(what))
        try:
            info.ccd_temp = float(t) if t is not None else None
        except (TypeError, ValueError):
            info.ccd_temp = None
        if info.ccd_temp is not None:
            break
    for sec in ("BIASSEC", "DATASEC", "TRIMSEC"):
        if isinstance(header.get(sec), str) and header[sec].strip():
            info.sections[sec] = header[sec].strip()

    try:
        _, lat = _first(header, profile.keys("site_lat"))
        _, lon = _first(header, profile.keys("site_lon"))
        _, elev = _first(header, profile.keys("site_elev"))
        if lat is not None and lon is not None:
            lon_deg = _angle(lon)
            if profile.lon_west_positive:
                lon_deg = -lon_deg
            info.site = (_angle(lat), lon_deg, float(elev) if elev is not None else 0.0)
    except (ValueError, TypeError):
        info.assumed.append("site keywords unreadable; ignored")
    try:
        _kra, ra = _first(header, profile.keys("ra"))
        _, dec = _first(header, profile.keys("dec"))
        if ra is not None and dec is not None:
            hours = isinstance(ra, str) and (":" in ra or " " in ra.strip())
            info.ra_dec = (_angle(ra, hours=hours), _angle(dec))
    except (ValueError, TypeError):
        info.assumed.append("pointing RA/DEC keywords unreadable; ignored")
    _, am = _first(header, profile.keys("airmass"))
    try:
        info.airmass = float(am) if am is not None else None
    except (TypeError, ValueError):
        info.airmass = None
    info.has_wcs = "CTYPE1" in header and "CRVAL1" in header
    return info


def _no_image(path: str, hdul: Any) -> str:
    """Reason for a FITS file that holds no 2-D image, naming what it does hold."""
    found = ", ".join(
        f"HDU {i}: " + ("header only" if h.data is None else f"{h.data.ndim}-D {type(h).__name__}")
        for i, h in enumerate(hdul)
    )
    return (
        f"{path}: no 2-D image in the file ({found}); the exposure is empty: take the file "
        "again from the camera computer, or remove it"
    )


def _unreadable(path: str, exc: Exception, caught: list | None = None) -> str:
    """Plain words for a file that astropy cannot read: not FITS, truncated, or corrupt."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(80)
    except OSError as err:
        return f"cannot read the file ({err.strerror}); check its permissions"
    if not head.startswith(b"SIMPLE  =") and not head.startswith(b"\x1f\x8b"):
        return (
            "not a FITS file (it does not begin with the FITS 'SIMPLE' card); remove it from "
            "the inputs"
        )
    for w in caught or []:
        text = str(w.message)
        if "truncated" in text:
            return (
                f"truncated FITS file ({text.split(':', 1)[-1].strip()}): the copy is "
                "incomplete; copy it again from the camera computer, or remove it"
            )
    return f"corrupt FITS file ({exc}); check the file or remove it"


def read_pixels(path: str, pedestal: float = 0.0) -> tuple[np.ndarray, fits.Header]:
    """Read the first 2-D image of a FITS file as float32 ADU (BZERO applied, PEDESTAL added)."""
    return _read_image(path, path, pedestal)


def read_pixels_sha256(
    path: str, pedestal: float = 0.0, *, header: bool = True
) -> tuple[np.ndarray, fits.Header | None, str]:
    """Like read_pixels, and the SHA-256 of the file's bytes, from a single read of the file.

    With header=False the header may be left unparsed (None is returned for it): a plain
    primary-HDU image is then read straight from the bytes, without astropy's header parsing,
    which costs several times the pixels' conversion.
    """
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror}); check its permissions") from None
    data = None if header else plain_image(blob)
    if data is not None:
        hdr = None
        if pedestal:
            data += np.float32(pedestal)
    else:
        # compressed files (.gz, .bz2, .zip) are opened by astropy from the path, which knows them
        source = io.BytesIO(blob) if blob.startswith(b"SIMPLE") else path
        data, hdr = _read_image(source, path, pedestal)
    return data, hdr, hashlib.sha256(blob).hexdigest()


# BITPIX -> big-endian dtype, and the BZERO values read here exactly as astropy reads them
_PLAIN_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", -32: ">f4", -64: ">f8"}
_PLAIN_BZERO = {8: (0.0,), 16: (0.0, 32768.0), 32: (0.0,), -32: (0.0,), -64: (0.0,)}


class FastHeader(dict):
    """A FITS header's keyword values (first card of each keyword), looked up in any case."""

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.upper())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.upper())

    def get(self, key: str, default: Any = None) -> Any:
        """The keyword's value, or default when the header has no such card."""
        return super().get(key.upper(), default)


_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([EeDd][+-]?\d+)?\Z")
_UNPRINTABLE = re.compile(rb"[^ -~]")
_ODD = object()  # a value this parser leaves to astropy


def _card_value(text: str) -> Any:
    """Value of a card's value field (after '= ') as astropy reads it, or _ODD."""
    s = text.lstrip(" ")
    if s.startswith("'"):
        parts, i = [], 1
        while True:
            j = s.find("'", i)
            if j < 0:
                return _ODD
            if s[j + 1 : j + 2] == "'":  # a doubled quote is a quote in the string
                parts.append(s[i : j + 1])
                i = j + 2
                continue
            parts.append(s[i:j])
            rest = s[j + 1 :].lstrip(" ")
            if rest and not rest.startswith("/"):
                return _ODD
            return "".join(parts).rstrip()  # trailing blanks are not significant
    v = s.split("/", 1)[0].strip()
    if v in ("T", "F"):
        return v == "T"
    if _INT.match(v):
        return int(v)
    if _FLOAT.match(v):
        return float(v.replace("D", "E").replace("d", "e"))
    return _ODD  # undefined or complex values, or not FITS at all


def parse_header(blob: bytes, max_blocks: int = 40) -> tuple[FastHeader, int] | None:
    """Keyword values of the first header in a FITS file's bytes and the byte offset of its data;
    None when the header needs astropy (long strings, HIERARCH or odd cards, no END)."""
    # astropy parses every card through several layers of Python and its configuration: for
    # a night of a thousand exposures that is seconds spent before any pixel is measured.
    if not blob.startswith(b"SIMPLE  ="):
        return None
    out = FastHeader()
    end = blob.find(b"END" + b" " * 77, 0, 2880 * max_blocks)
    while end >= 0 and end % 80:  # an END card starts a card
        end = blob.find(b"END" + b" " * 77, end + 1, 2880 * max_blocks)
    if end < 0 or _UNPRINTABLE.search(blob, 0, end):
        return None
    for start in range(0, end, 80):
        card = blob[start : start + 80]
        key = card[:8].rstrip().decode("ascii").upper()
        if card[8:10] != b"= ":
            if key in ("CONTINUE", "HIERARCH") or card[:8] == b"HIERARCH":
                return None
            continue  # commentary cards: COMMENT, HISTORY, blank
        value = _card_value(card[10:].decode("ascii"))
        if value is _ODD:
            return None
        out.setdefault(key, value)
    return out, (end // 2880 + 1) * 2880


def _fast_image_header(path: str) -> FastHeader | None:
    """The header of a file whose primary HDU is a whole 2-D image, without reading its pixels;
    None for anything else (extensions, compressed or truncated files: astropy reads those)."""
    with open(path, "rb") as fh:
        blob = fh.read(2880 * 4)
        if b"END" + b" " * 77 not in blob:
            blob += fh.read(2880 * 36)
        size = os.fstat(fh.fileno()).st_size
    parsed = parse_header(blob)
    if parsed is None:
        return None
    h, offset = parsed
    try:
        bitpix, naxis, nx, ny = (int(h[k]) for k in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2"))
    except (KeyError, TypeError, ValueError):
        return None
    if h.get("SIMPLE") is not True or naxis != 2 or nx <= 0 or ny <= 0:
        return None
    if bitpix not in (8, 16, 32, 64, -32, -64) or "GROUPS" in h:
        return None
    nbytes = nx * ny * abs(bitpix) // 8
    if size < offset + -(-nbytes // 2880) * 2880:  # truncated, or padding missing
        return None
    return h


def plain_image(blob: bytes) -> np.ndarray | None:
    """float32 pixels of a FITS file's primary HDU when it is a plain 2-D image (BSCALE 1, BZERO
    0, or 32768 for 16-bit, no BLANK), read from its bytes; None for anything else (then
    astropy reads it). The same values as astropy's, at a fraction of the cost."""
    if not blob.startswith(b"SIMPLE  ="):
        return None
    cards: dict[str, str] = {}
    end = -1
    for start in range(0, min(len(blob), 2880 * 40), 80):  # headers of up to 40 blocks
        card = blob[start : start + 80]
        key = card[:8].rstrip()
        if key == b"END":
            end = start
            break
        if card[8:10] == b"= " and key in (
            b"SIMPLE", b"BITPIX", b"NAXIS", b"NAXIS1", b"NAXIS2", b"BZERO", b"BSCALE", b"BLANK",
            b"GROUPS", b"PCOUNT", b"GCOUNT",
        ):  # fmt: skip
            cards[key.decode()] = card[10:].split(b"/")[0].strip().decode("ascii", "replace")
    try:
        if end < 0 or cards.get("SIMPLE") != "T" or int(cards["NAXIS"]) != 2:
            return None
        if {"BLANK", "GROUPS", "PCOUNT", "GCOUNT"} & cards.keys():
            return None
        bitpix, nx, ny = int(cards["BITPIX"]), int(cards["NAXIS1"]), int(cards["NAXIS2"])
        bzero = float(cards.get("BZERO", "0").replace("D", "E"))
        bscale = float(cards.get("BSCALE", "1").replace("D", "E"))
    except (KeyError, ValueError):
        return None
    if bitpix not in _PLAIN_DTYPES or bscale != 1.0 or bzero not in _PLAIN_BZERO[bitpix]:
        return None
    offset = (end // 2880 + 1) * 2880
    count = nx * ny
    if nx <= 0 or ny <= 0 or offset + count * abs(bitpix) // 8 > len(blob):
        return None  # truncated: astropy says so in its own words
    if bitpix == 16:  # (most cameras) swapped, converted and offset in one compiled pass
        from tsphot import kernels

        words = np.frombuffer(blob, np.uint16, count=count, offset=offset)
        return kernels.int16be_to_float32(words, bzero).reshape(ny, nx)
    data = np.frombuffer(blob, _PLAIN_DTYPES[bitpix], count=count, offset=offset)
    out = data.astype(np.float32).reshape(ny, nx)
    if bzero:
        out += np.float32(bzero)
    return out


def _read_image(source: Any, path: str, pedestal: float) -> tuple[np.ndarray, fits.Header]:
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(source, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.data is not None and h.data.ndim == 2), None)
                if hdu is None:
                    raise InputError(_no_image(path, hdul))
                data = np.asarray(hdu.data, dtype=np.float32)
                header = hdu.header.copy()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: {_unreadable(path, exc, caught)}") from None
    if pedestal:
        data += np.float32(pedestal)
    return data, header


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def ingest(
    paths: list[str],
    overrides: dict[str, Any] | None = None,
    progress: Callable[[Any], None] | None = None,
) -> list[FrameInfo]:
    """Read every exposure's header (progress gets each path); sorted by time, bad ones last."""
    return order_frames(read_headers(paths, overrides, progress))


def order_frames(infos: list[FrameInfo]) -> list[FrameInfo]:
    """Sort headers already read by mid-exposure time, mark odd sizes and duplicates, index."""
    good = [i for i in infos if i.status == "ok"]
    bad = [i for i in infos if i.status != "ok"]
    good.sort(key=lambda i: i.jd_utc_mid)
    if good:
        shape = max({i.shape for i in good}, key=lambda s: sum(1 for i in good if i.shape == s))
        for i in good:
            if i.shape != shape:
                i.status = "bad_size"
                i.reason = (
                    f"{i.path}: image is {i.shape[1]}x{i.shape[0]} px but the night's frames are "
                    f"{shape[1]}x{shape[0]}; remove it or reduce it separately"
                )
    _flag_minority(
        good,
        "binning",
        lambda i: i.binning,
        "bad_binning",
        lambda i, v: (
            f"binned {i.binning[0]}x{i.binning[1]}, but the night's frames are "
            f"{v[0]}x{v[1]}; reduce each binning separately"
        ),
    )
    _flag_minority(
        good,
        "filter",
        lambda i: i.filter.strip().casefold() or None,  # frames that do not say are not judged
        "other_filter",
        lambda i, v: (
            f"filter {i.filter.strip()!r}, but most of the night's frames are "
            f"{v!r}; reduce each filter separately"
        ),
    )
    seen: dict[float, str] = {}
    for i in good:
        if i.status == "ok" and i.jd_utc_mid in seen:
            i.status = "duplicate"
            i.reason = (
                f"{i.path}: same time ({i.date_obs}) as {seen[i.jd_utc_mid]}: a duplicated "
                "exposure, measured once from the other file; remove one of the copies"
            )
        elif i.status == "ok":
            seen[i.jd_utc_mid] = i.path
    ordered = good + bad
    for n, i in enumerate(ordered):
        i.index = n
    return ordered


def _flag_minority(
    infos: list[FrameInfo],
    what: str,
    value: Callable[[FrameInfo], Any],
    status: str,
    why: Callable[[FrameInfo, Any], str],
) -> None:
    """Mark usable frames whose `what` differs from most frames' (None: not judged)."""
    vals = [value(i) for i in infos if i.status == "ok" and value(i) is not None]
    if len(set(vals)) < 2:
        return
    common = max(sorted(set(vals), key=str), key=vals.count)  # ties: the same pick every run
    shown = next(
        (getattr(i, what) for i in infos if i.status == "ok" and value(i) == common), common
    )
    if isinstance(shown, str):
        shown = shown.strip()
    for i in infos:
        v = value(i)
        if i.status == "ok" and v is not None and v != common:
            i.status = status
            i.reason = f"{i.path}: {why(i, shown)}"


def quiet_wcs(header: fits.Header) -> Any:
    """The header's celestial WCS, or None; astropy's notes on fixed keywords are not errors."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:
            return None
    return wcs if wcs.has_celestial else None
