"""ALCDEF export: asteroid light curves in the Asteroid Lightcurve Data Exchange Format.

ALCDEF (Stephens et al. 2010; "ALCDEF Definition and Standards", Warner & Stephens, v2.x) is the
format the Minor Planet Center and the ALCDEF database take asteroid time-series photometry in.
A file is plain ASCII, one ``KEYWORD=VALUE`` per line; each session (night) is one block::

    STARTMETADATA
    OBJECTNUMBER=2713
    ...                      metadata, one keyword per line
    DELIMITER=PIPE
    ENDMETADATA
    DATA=2458404.587419|0.123|0.012|2.31     JD|MAG|MAGERR[|AIRMASS]
    ...
    ENDDATA

The rules `validate` checks (and the writer obeys) are those of the standard as far as they
could be confirmed from its keyword list and published ALCDEF files (e.g. the database's own
export of (1) Ceres):

1. ASCII only, no line longer than 255 characters, no blank lines.
2. Blocks are STARTMETADATA … ENDMETADATA, then DATA lines, then ENDDATA; nothing outside.
3. Metadata lines are KEYWORD=VALUE with a known keyword (COMPxxx keywords may carry an index).
4. Required keywords are present once: OBJECTNUMBER, OBJECTNAME, MPCDESIG, SESSIONDATE,
   SESSIONTIME, CONTACTNAME, CONTACTINFO, OBSERVERS, FILTER, MAGBAND, DIFFERMAGS, STANDARD,
   LTCAPP, REDUCEDMAGS, DELIMITER.
5. OBJECTNUMBER is a whole number (0 when unnumbered); OBJECTNAME is not empty.
6. SESSIONDATE is YYYY-MM-DD and SESSIONTIME HH:MM:SS (UT), the approximate middle of the
   session: it must fall within the block's first and last JD.
7. TRUE/FALSE keywords (DIFFERMAGS, REVISEDDATA, CICORRECTION, ALLOWSHARING, SUBMITPDS) say
   exactly TRUE or FALSE.
8. STANDARD is NONE, INTERNAL or TRANSFORMED; LTCAPP and REDUCEDMAGS are NONE, AVERAGE or
   EACH; LTCAPP=AVERAGE needs LTCDAYS and REDUCEDMAGS=AVERAGE needs UCORMAG.
9. DELIMITER is PIPE or TAB, and every DATA line uses it: JD, MAG, MAGERR and optionally
   AIRMASS, all numbers; JD is a full Julian date, MAGERR positive, JD increasing.
10. OBSLONGITUDE (east positive) and OBSLATITUDE are signed decimal degrees in range; PHASE is
    a signed angle; PABL 0..360, PABB −90..+90.
11. CONTACTINFO holds an e-mail address in square brackets.
12. No web addresses anywhere (the database refuses them, even in comments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.time import Time

from tsphot.errors import TsphotError

MAX_LINE = 255
REQUIRED = (
    "OBJECTNUMBER",
    "OBJECTNAME",
    "MPCDESIG",
    "SESSIONDATE",
    "SESSIONTIME",
    "CONTACTNAME",
    "CONTACTINFO",
    "OBSERVERS",
    "FILTER",
    "MAGBAND",
    "DIFFERMAGS",
    "STANDARD",
    "LTCAPP",
    "REDUCEDMAGS",
    "DELIMITER",
)
KNOWN = {
    *REQUIRED,
    "ALLOWSHARING",
    "BIBCODE",
    "CIBAND",
    "CICORRECTION",
    "CITARGET",
    "COMMENT",
    "DETECTOR",
    "EPOCH",
    "EQUINOX",
    "EXPJD",
    "EXPOSURE",
    "FACILITY",
    "LCBLOCKID",
    "LTCDAYS",
    "LTCTYPE",
    "MAGADJUST",
    "MPCCODE",
    "OBJECTDEC",
    "OBJECTRA",
    "OBSLATITUDE",
    "OBSLONGITUDE",
    "PABB",
    "PABL",
    "PHASE",
    "PUBLICATION",
    "REVISEDDATA",
    "SUBMITPDS",
    "TELESCOPE",
    "UCORMAG",
}
COMP_PREFIXES = ("COMPNAME", "COMPRA", "COMPDEC", "COMPMAG", "COMPMAGBAND", "COMPCI", "COMPCIBAND")
BOOLEAN = ("DIFFERMAGS", "REVISEDDATA", "CICORRECTION", "ALLOWSHARING", "SUBMITPDS")
DELIMITERS = {"PIPE": "|", "TAB": "\t"}
URL = re.compile(r"(https?://|ftp://|www\.)", re.IGNORECASE)
EMAIL_BRACKETS = re.compile(r"\[[^\[\]\s@]+@[^\[\]\s@]+\.[^\[\]\s@]+\]")


class AlcdefError(TsphotError):
    """An ALCDEF file cannot be written with the metadata given."""


@dataclass
class Session:
    """One night of one asteroid: mid-exposure JD (UTC), magnitudes, errors, optional airmass."""

    jd: np.ndarray
    mag: np.ndarray
    err: np.ndarray
    airmass: np.ndarray | None = None
    phase_deg: float | None = None  # solar phase angle
    pabl_deg: float | None = None
    pabb_deg: float | None = None
    comments: list[str] = field(default_factory=list)


def _clean(value: object) -> str:
    text = " ".join(str(value).split())  # no newlines or tabs inside a value
    return text


def session_block(meta: dict[str, str], s: Session) -> list[str]:
    """Lines of one ALCDEF block (metadata, data, ENDDATA) for one session."""
    ok = np.isfinite(s.jd) & np.isfinite(s.mag) & np.isfinite(s.err) & (s.err > 0)
    if not ok.any():
        raise AlcdefError("a session has no valid points (finite JD, magnitude, positive error)")
    order = np.argsort(s.jd[ok])
    jd, mag, err = s.jd[ok][order], s.mag[ok][order], s.err[ok][order]
    am = s.airmass[ok][order] if s.airmass is not None else None
    mid = Time(0.5 * (jd[0] + jd[-1]), format="jd", scale="utc").to_datetime()
    m = {
        "REVISEDDATA": "FALSE",
        "ALLOWSHARING": "FALSE",
        "SUBMITPDS": "FALSE",
        "MPCDESIG": "",
        "DIFFERMAGS": "TRUE",
        "STANDARD": "NONE",
        "LTCAPP": "NONE",
        "REDUCEDMAGS": "NONE",
        "EXPJD": "MID",
        **{k.upper(): _clean(v) for k, v in meta.items()},
    }
    m["SESSIONDATE"] = mid.strftime("%Y-%m-%d")
    m["SESSIONTIME"] = mid.strftime("%H:%M:%S")
    m["DELIMITER"] = "PIPE"
    if s.phase_deg is not None:
        m["PHASE"] = f"{s.phase_deg:+.2f}"
    if s.pabl_deg is not None:
        m["PABL"] = f"{s.pabl_deg % 360:.1f}"
    if s.pabb_deg is not None:
        m["PABB"] = f"{s.pabb_deg:+.1f}"
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise AlcdefError(
            "ALCDEF needs " + ", ".join(missing) + ": give them as --alcdef-meta KEY=VALUE "
            "(e.g. --alcdef-meta CONTACTINFO='[you@example.org]')"
        )
    lines = ["STARTMETADATA"]
    order_keys = [k for k in m if k not in ("DELIMITER",)]
    for k in order_keys:
        lines.append(f"{k}={m[k]}")
    for c in s.comments:
        lines.append(f"COMMENT={_clean(c)}")
    lines.append("DELIMITER=PIPE")
    lines.append("ENDMETADATA")
    for i in range(len(jd)):
        row = f"DATA={jd[i]:.6f}|{mag[i]:+.4f}|{err[i]:.4f}"
        if am is not None and np.isfinite(am[i]):
            row += f"|{am[i]:.3f}"
        lines.append(row)
    lines.append("ENDDATA")
    return lines


def write_text(meta: dict[str, str], sessions: Sequence[Session]) -> str:
    """Whole ALCDEF file text for sessions of one object; raises if it breaks a rule."""
    lines: list[str] = []
    for s in sessions:
        lines.extend(session_block(meta, s))
    text = "\n".join(lines) + "\n"
    problems = validate(text)
    if problems:
        raise AlcdefError("ALCDEF output breaks its rules: " + "; ".join(problems[:5]))
    return text


def _num(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


def _check_meta(lineno: int, key: str, value: str, out: list[str]) -> None:
    where = f"line {lineno} ({key})"
    if key in BOOLEAN and value not in ("TRUE", "FALSE"):
        out.append(f"{where}: must be TRUE or FALSE, not {value!r}")
    if key == "OBJECTNUMBER" and not re.fullmatch(r"\d+", value):
        out.append(f"{where}: must be a whole number (0 when unnumbered), not {value!r}")
    if key == "OBJECTNAME" and not value.strip():
        out.append(f"{where}: must not be empty")
    if key == "SESSIONDATE" and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        out.append(f"{where}: must be YYYY-MM-DD, not {value!r}")
    if key == "SESSIONTIME" and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d", value):
        out.append(f"{where}: must be HH:MM:SS (UT), not {value!r}")
    if key == "STANDARD" and value not in ("NONE", "INTERNAL", "TRANSFORMED"):
        out.append(f"{where}: must be NONE, INTERNAL or TRANSFORMED, not {value!r}")
    if key in ("LTCAPP", "REDUCEDMAGS") and value not in ("NONE", "AVERAGE", "EACH"):
        out.append(f"{where}: must be NONE, AVERAGE or EACH, not {value!r}")
    if key == "DELIMITER" and value not in DELIMITERS:
        out.append(f"{where}: must be PIPE or TAB, not {value!r}")
    if key == "CONTACTINFO" and not EMAIL_BRACKETS.search(value):
        out.append(f"{where}: must hold an e-mail address in square brackets, [name@host]")
    ranges = {
        "OBSLONGITUDE": (-180.0, 180.0),
        "OBSLATITUDE": (-90.0, 90.0),
        "PHASE": (-180.0, 180.0),
        "PABL": (0.0, 360.0),
        "PABB": (-90.0, 90.0),
    }
    if key in ranges:
        v = _num(value)
        lo, hi = ranges[key]
        if v is None or not lo <= v <= hi:
            out.append(f"{where}: must be decimal degrees in [{lo:g}, {hi:g}], not {value!r}")
        elif key in ("OBSLONGITUDE", "OBSLATITUDE", "PHASE", "PABB") and value[0] not in "+-":
            out.append(f"{where}: must carry its sign (+ or -), not {value!r}")


def validate(text: str) -> list[str]:
    """Every broken ALCDEF rule in text (see the module docstring), as messages naming the line."""
    out: list[str] = []
    try:
        text.encode("ascii")
    except UnicodeEncodeError as exc:
        out.append(f"non-ASCII character at offset {exc.start}")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    state = "outside"
    meta: dict[str, str] = {}
    jds: list[float] = []
    delim = "|"
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE:
            out.append(f"line {n}: {len(line)} characters, more than {MAX_LINE}")
        if not line.strip():
            out.append(f"line {n}: blank line")
            continue
        if URL.search(line):
            out.append(f"line {n}: web address (not allowed in ALCDEF)")
        if line == "STARTMETADATA":
            if state != "outside":
                out.append(f"line {n}: STARTMETADATA inside a block (missing ENDDATA?)")
            state, meta, jds = "meta", {}, []
            continue
        if line == "ENDMETADATA":
            if state != "meta":
                out.append(f"line {n}: ENDMETADATA without STARTMETADATA")
            for k in REQUIRED:
                if k not in meta:
                    out.append(f"line {n}: block lacks required keyword {k}")
            if meta.get("LTCAPP") == "AVERAGE" and "LTCDAYS" not in meta:
                out.append(f"line {n}: LTCAPP=AVERAGE needs LTCDAYS")
            if meta.get("REDUCEDMAGS") == "AVERAGE" and "UCORMAG" not in meta:
                out.append(f"line {n}: REDUCEDMAGS=AVERAGE needs UCORMAG")
            delim = DELIMITERS.get(meta.get("DELIMITER", "PIPE"), "|")
            state = "data"
            continue
        if line == "ENDDATA":
            if state != "data":
                out.append(f"line {n}: ENDDATA outside a data section")
            elif not jds:
                out.append(f"line {n}: block has no DATA lines")
            else:
                _check_session_time(n, meta, jds, out)
            state = "outside"
            continue
        if "=" not in line:
            out.append(f"line {n}: not KEYWORD=VALUE: {line[:40]!r}")
            continue
        key, value = line.split("=", 1)
        if state == "outside":
            out.append(f"line {n}: {key} outside a STARTMETADATA … ENDDATA block")
            continue
        if state == "data":
            if key != "DATA":
                out.append(f"line {n}: only DATA lines may follow ENDMETADATA, got {key}")
                continue
            _check_data(n, value, delim, jds, out)
            continue
        if key == "DATA":
            out.append(f"line {n}: DATA before ENDMETADATA")
            continue
        base = re.sub(r"\d+$", "", key)
        if key not in KNOWN and base not in COMP_PREFIXES:
            out.append(f"line {n}: unknown keyword {key!r}")
        if key in meta and key not in ("COMMENT", "EPOCH", "EQUINOX"):
            out.append(f"line {n}: keyword {key} given twice in one block")
        meta[key] = value
        _check_meta(n, key, value, out)
    if state != "outside":
        out.append("file ends inside a block (missing ENDDATA)")
    return out


def _check_data(n: int, value: str, delim: str, jds: list[float], out: list[str]) -> None:
    parts = value.split(delim)
    if len(parts) not in (3, 4):
        out.append(f"line {n}: DATA needs JD{delim}MAG{delim}MAGERR[{delim}AIRMASS]")
        return
    nums = [_num(p) for p in parts]
    if any(v is None for v in nums):
        out.append(f"line {n}: DATA fields must be numbers: {value!r}")
        return
    jd, _, err = nums[0], nums[1], nums[2]
    if not 2_400_000.0 < jd < 2_600_000.0:
        out.append(f"line {n}: JD {jd} is not a full Julian date")
    if not err > 0:
        out.append(f"line {n}: MAGERR must be positive")
    if len(nums) == 4 and not 1.0 <= nums[3] < 40.0:
        out.append(f"line {n}: AIRMASS {nums[3]} out of range 1..40")
    if jds and jd <= jds[-1]:
        out.append(f"line {n}: JD not increasing")
    jds.append(jd)


def _check_session_time(n: int, meta: dict[str, str], jds: list[float], out: list[str]) -> None:
    d, t = meta.get("SESSIONDATE", ""), meta.get("SESSIONTIME", "")
    try:
        jd_mid = Time(f"{d}T{t}", format="isot", scale="utc").jd
    except ValueError:
        return  # its format error is reported with the keyword
    slack = 1 / 1440
    if not jds[0] - slack <= jd_mid <= jds[-1] + slack:
        out.append(f"line {n}: SESSIONDATE/TIME {d} {t} is outside the block's data")
