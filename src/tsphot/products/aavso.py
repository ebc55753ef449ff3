"""AAVSO reports: the Extended File Format (variable stars) and the Exoplanet Report format.

The rules checked here are the AAVSO's published ones:

Extended File Format (version 1.2). Six parameter lines first: ``#TYPE=Extended``,
``#OBSCODE=``, ``#SOFTWARE=`` (at most 255 characters), ``#DELIM=`` (one ASCII character
32–126 other than ``|``, ``#`` and space, or the words ``tab`` / ``comma``), ``#DATE=`` (JD,
HJD or EXCEL; times are mid-exposure) and ``#OBSTYPE=`` (CCD, DSLR or PEP; a CMOS camera is
reported as CCD). Further ``#`` lines are comments; no blank lines. Then one observation per
line, fifteen fields: STARID (≤30 characters), DATE (≤16), MAGNITUDE (≤8, with a decimal
point, optionally prefixed by ``<``), MAGERR (≤6 or ``na``), FILTER (an AAVSO filter code),
TRANS (YES/NO), MTYPE (STD, DIF or ABS; DIF needs a comparison name), CNAME (≤20; ``ENSEMBLE``
for ensemble photometry), CMAG (≤8 or ``na``), KNAME (≤20 or ``na``), KMAG (≤8 or ``na``),
AIRMASS (≤7 or ``na``), GROUP (≤5 or ``na``), CHART (≤20), NOTES (``na`` if none; ``|KEY=value``
subfields such as VMAGINS, CMAGINS, KMAGINS, CREFMAG, KREFMAG, VX). A field must not contain the
delimiter. For an ensemble, VPhot writes ``CNAME=ENSEMBLE``, ``CMAG=na``, the check star's
standardised magnitude in KMAG and the ensemble's mean instrumental and reference magnitudes as
CMAGINS and CREFMAG in the notes; tsphot does the same.

Exoplanet Report format (AAVSO Exoplanet Database; parameters are case sensitive).
Required: ``#TYPE=EXOPLANET``, ``#OBSCODE=``, ``#SOFTWARE=`` (≤255), ``#DELIM=`` (one of
``, ; | : ! / ?`` or ``tab``), ``#DATE_TYPE=`` (JD_UTC, HJD_UTC, BJD_UTC, BJD_TT, BJD_TDB),
``#OBSTYPE=`` (CCD or DSLR), ``#STAR_NAME=`` (≤100), ``#EXOPLANET_NAME=`` (≤100),
``#BINNING=`` (1x1, 2x2, 3x3 or 4x4), ``#EXPOSURE_TIME=`` (seconds, at most 600),
``#FILTER=``, ``#DETREND_PARAMETERS=`` (0 to 4 comma-separated names, ≤100 characters),
``#MEASUREMENT_TYPE=`` (Rnflux: relative flux normalised to 1 out of transit, or Dmag;
undetrended). Optional: ``#SECONDARY_OBSCODES=`` (≤60), ``#PRIORS=`` (≤250), ``#RESULTS=``
(≤250), ``#NOTES=``. Then one measurement per line: date, value (decimal(15,8)), error
(decimal(12,6), or na / n/a / empty) and one decimal(12,6) value per detrend parameter.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from tsphot import __version__
from tsphot.errors import TsphotError

SOFTWARE = f"tsphot {__version__}"

FILTERS = {
    "U", "B", "V", "R", "I", "J", "H", "K", "TG", "TB", "TR", "CV", "CR", "SZ", "SU", "SG",
    "SR", "SI", "STU", "STV", "STB", "STY", "STHBW", "STHBN", "MA", "MB", "MI", "ZS", "Y", "HA",
    "HAC", "O", "CBB",
}  # fmt: skip

# Header FILTER values → AAVSO filter codes (lower-case, punctuation removed).
FILTER_CODES = {
    "u": "U", "b": "B", "v": "V", "r": "R", "rc": "R", "cousinsr": "R", "i": "I", "ic": "I",
    "cousinsi": "I", "johnsonu": "U", "johnsonb": "B", "johnsonv": "V", "j": "J", "h": "H",
    "k": "K", "ks": "K", "clear": "CV", "c": "CV", "l": "CV", "lum": "CV", "luminance": "CV",
    "none": "CV", "open": "CV", "cv": "CV", "cr": "CR", "cbb": "CBB", "exo": "CBB",
    "exoplanet": "CBB", "g": "TG", "green": "TG", "blue": "TB", "red": "TR", "tg": "TG",
    "tb": "TB", "tr": "TR", "sg": "SG", "sr": "SR", "si": "SI", "sz": "SZ", "su": "SU",
    "gp": "SG", "rp": "SR", "ip": "SI", "zp": "SZ", "up": "SU", "sloang": "SG", "sloanr": "SR",
    "sloani": "SI", "sloanz": "SZ", "sloanu": "SU", "ha": "HA", "halpha": "HA",
}  # fmt: skip

EXT_FIELDS = (
    "STARID", "DATE", "MAGNITUDE", "MAGERR", "FILTER", "TRANS", "MTYPE", "CNAME", "CMAG",
    "KNAME", "KMAG", "AIRMASS", "GROUP", "CHART", "NOTES",
)  # fmt: skip
EXT_LIMITS = {
    "STARID": 30, "DATE": 16, "MAGNITUDE": 8, "MAGERR": 6, "CNAME": 20, "CMAG": 8,
    "KNAME": 20, "KMAG": 8, "AIRMASS": 7, "GROUP": 5, "CHART": 20,
}  # fmt: skip
EXO_DELIMS = {",", ";", "|", ":", "!", "/", "?", "tab"}
EXO_DATE_TYPES = {"JD_UTC", "HJD_UTC", "BJD_UTC", "BJD_TT", "BJD_TDB"}
EXO_MEASUREMENT_TYPES = {"Rnflux", "Dmag"}


class ExportError(TsphotError):
    """A report cannot be written from this run (a missing setting, a rule it would break)."""


def filter_code(setting: str | None, header_filters: list[str]) -> str:
    """The AAVSO filter code: the setting if given, else from the exposures' FILTER keyword."""
    if setting:
        code = setting.strip().upper()
        if code not in FILTERS:
            raise ExportError(
                f"aavso_filter {setting!r} is not an AAVSO filter code "
                f"({', '.join(sorted(FILTERS))})"
            )
        return code
    names = sorted({f.strip() for f in header_filters if f and f.strip()})
    if len(names) > 1:
        raise ExportError(
            f"the exposures use several filters ({', '.join(names)}); an AAVSO report is for "
            "one filter: reduce them separately, or set aavso_filter"
        )
    if not names:
        raise ExportError(
            "the exposures have no FILTER keyword: set aavso_filter (CV for clear/unfiltered)"
        )
    key = re.sub(r"[^a-z0-9]", "", names[0].lower().replace("'", "p"))
    if key in FILTER_CODES:
        return FILTER_CODES[key]
    raise ExportError(
        f"FILTER {names[0]!r} has no AAVSO code that tsphot knows: set aavso_filter "
        "(V, B, R, I, CV, TG, SR, …)"
    )


def _num(v: float, limit: int, decimals: int = 4) -> str:
    """A number with a decimal point in at most `limit` characters, or 'na'."""
    if v is None or not math.isfinite(v):
        return "na"
    for d in range(decimals, 0, -1):
        s = f"{v:.{d}f}"
        if len(s) <= limit:
            return s
    raise ExportError(f"value {v} does not fit in {limit} characters")


def _check_obscode(code: str | None) -> str:
    if not code or not code.strip():
        raise ExportError(
            "AAVSO reports need your AAVSO observer code: set observer_code in the settings "
            "or pass --observer-code"
        )
    code = code.strip()
    if any(c in code for c in ",#| \t"):
        raise ExportError(f"observer code {code!r} holds a character the format forbids")
    return code


def _column(table: Any, name: str) -> np.ndarray:
    c = table[name]
    return np.asarray(getattr(c, "value", c))


def extended_report(
    targets: dict[str, Any],
    checks: dict[str, Any],
    results: Any,
    record: dict[str, Any],
    *,
    observer_code: str | None,
    filter_code_: str,
    chart: str = "na",
    obstype: str = "CCD",
) -> str:
    """AAVSO Extended File Format text for the targets' valid points (ensemble photometry)."""
    obscode = _check_obscode(observer_code)
    comps = [c for c in record.get("comparison_stars", []) if c.get("used")]
    cat = [c.get("catalog_mag") for c in comps]
    standard = bool(comps) and all(m is not None for m in cat)
    if standard:
        w = np.array([c["weight"] for c in comps], float)
        crefmag = float(np.sum(w * np.array(cat, float)) / np.sum(w))
    mags = {}
    for name in [*targets, *checks]:
        sel = results[results["object"] == name]
        m = np.full(len(next(iter(targets.values()))), np.nan)
        m[np.asarray(sel["frame"], int)] = _column(sel, "mag")
        mags[name] = m
    check_name, check = next(iter(checks.items()), (None, None))
    krefmag = (record.get("objects", {}).get(check_name) or {}).get("catalog_mag")
    if obstype not in ("CCD", "DSLR", "PEP"):
        raise ExportError(f"OBSTYPE {obstype!r}: the Extended format takes CCD, DSLR or PEP")
    chart = (chart or "na").strip() or "na"
    lines = [
        "#TYPE=Extended",
        f"#OBSCODE={obscode}",
        f"#SOFTWARE={SOFTWARE}",
        "#DELIM=,",
        "#DATE=JD",
        f"#OBSTYPE={obstype}",
        f"#ensemble of {len(comps)} comparison stars (Everett & Howell 2001 weights); "
        + (
            "magnitudes standardised with the weighted mean catalogue magnitude of the ensemble"
            if standard
            else "no catalogue magnitudes for the comparison stars: differential magnitudes "
            "(target minus ensemble)"
        ),
        "#NAME,DATE,MAG,MERR,FILT,TRANS,MTYPE,CNAME,CMAG,KNAME,KMAG,AMASS,GROUP,CHART,NOTES",
    ]
    for name, lc in targets.items():
        if len(name) > EXT_LIMITS["STARID"]:
            raise ExportError(f"target name {name!r} is longer than the 30 characters of STARID")
        jd = _column(lc, "JD_UTC")
        dm = _column(lc, "diff_mag")
        de = _column(lc, "diff_mag_err")
        am = _column(lc, "airmass")
        zp = _column(lc, "ens_offset")
        valid = _column(lc, "valid").astype(bool)
        kd = _column(check, "diff_mag") if check is not None else None
        for i in np.nonzero(valid)[0]:
            mag = dm[i] + crefmag if standard else dm[i]
            kmag = "na"
            if kd is not None and np.isfinite(kd[i]):
                kmag = _num(kd[i] + crefmag if standard else kd[i], 8, 3)
            notes = [f"VMAGINS={mags[name][i]:.4f}", f"CMAGINS={zp[i]:.4f}"]
            if check_name is not None and np.isfinite(mags[check_name][i]):
                notes.append(f"KMAGINS={mags[check_name][i]:.4f}")
            if standard:
                notes.append(f"CREFMAG={crefmag:.4f}")
                if krefmag is not None:
                    notes.append(f"KREFMAG={krefmag:.4f}")
            if np.isfinite(am[i]):
                notes.append(f"VX={am[i]:.4f}")
            fields = [
                name,
                f"{jd[i]:.6f}",
                _num(mag, 8, 4),
                _num(de[i], 6, 4),
                filter_code_,
                "NO",
                "STD" if standard else "DIF",
                "ENSEMBLE",
                "na",
                (check_name or "na")[:20],
                kmag,
                _num(am[i], 7, 4),
                "na",
                chart[:20],
                "tsphot ensemble|" + "|".join(notes),
            ]
            lines.append(",".join(fields))
    text = "\n".join(lines) + "\n"
    problems = validate_extended(text)
    if problems:
        raise ExportError("AAVSO Extended report breaks the format: " + "; ".join(problems[:5]))
    return text


def _params(lines: list[str]) -> tuple[dict[str, str], int]:
    """Leading '#KEY=value' parameters and the index of the first data line."""
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        body = lines[i][1:]
        if "=" in body and re.match(r"^[A-Za-z_]+=", body):
            k, v = body.split("=", 1)
            params.setdefault(k, v)
        i += 1
    return params, i


def _is_decimal(s: str, total: int | None = None, frac: int | None = None) -> bool:
    if not re.fullmatch(r"[+-]?\d+(\.\d+)?", s):
        return False
    digits = s.lstrip("+-").split(".")
    if total is not None and len(digits[0]) + (len(digits[1]) if len(digits) > 1 else 0) > total:
        return False
    return not (frac is not None and len(digits) > 1 and len(digits[1]) > frac)


def validate_extended(text: str) -> list[str]:
    """Every way the text breaks the AAVSO Extended File Format (empty if none)."""
    problems: list[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            problems.append(f"line {n}: blank line (comment it out with #)")
        if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in line):
            problems.append(f"line {n}: non-ASCII character")
    params = {k.upper(): v for k, v in _params(lines)[0].items()}
    for key in ("TYPE", "OBSCODE", "SOFTWARE", "DELIM", "DATE", "OBSTYPE"):
        if key not in params:
            problems.append(f"missing parameter #{key}=")
    if params.get("TYPE", "").upper() != "EXTENDED":
        problems.append("#TYPE must be Extended")
    if not params.get("OBSCODE", "").strip():
        problems.append("#OBSCODE is empty")
    if len(params.get("SOFTWARE", "")) > 255:
        problems.append("#SOFTWARE longer than 255 characters")
    delim = params.get("DELIM", ",")
    delim = {"tab": "\t", "comma": ","}.get(delim.lower(), delim)
    if len(delim) != 1 or (delim != "\t" and not 32 <= ord(delim) <= 126) or delim in "|# ":
        problems.append(f"#DELIM {params.get('DELIM')!r} is not an allowed delimiter")
        return problems
    if params.get("DATE", "").upper() not in ("JD", "HJD", "EXCEL"):
        problems.append("#DATE must be JD, HJD or EXCEL")
    if params.get("OBSTYPE", "CCD").upper() not in ("CCD", "DSLR", "PEP"):
        problems.append("#OBSTYPE must be CCD, DSLR or PEP")
    data = [(n, line) for n, line in enumerate(lines, 1) if not line.startswith("#")]
    if not data:
        problems.append("no observation lines")
    for n, line in data:
        f = line.split(delim)
        if len(f) != len(EXT_FIELDS):
            problems.append(f"line {n}: {len(f)} fields, the format has {len(EXT_FIELDS)}")
            continue
        d = dict(zip(EXT_FIELDS, f, strict=True))
        for key, lim in EXT_LIMITS.items():
            if len(d[key]) > lim:
                problems.append(f"line {n}: {key} {d[key]!r} longer than {lim} characters")
        for key in EXT_FIELDS:
            if d[key] == "":
                problems.append(f"line {n}: {key} is empty (use na)")
        if not d["STARID"].strip() or d["STARID"].lower() == "na":
            problems.append(f"line {n}: STARID missing")
        if params.get("DATE", "").upper() in ("JD", "HJD") and not _is_decimal(d["DATE"]):
            problems.append(f"line {n}: DATE {d['DATE']!r} is not a Julian date")
        mag = d["MAGNITUDE"].lstrip("<")
        if "." not in mag or not _is_decimal(mag):
            problems.append(f"line {n}: MAGNITUDE {d['MAGNITUDE']!r} needs a decimal point")
        for key in ("MAGERR", "CMAG", "KMAG", "AIRMASS"):
            if d[key].lower() != "na" and not _is_decimal(d[key]):
                problems.append(f"line {n}: {key} {d[key]!r} is neither a number nor na")
        if d["FILTER"].upper() not in FILTERS:
            problems.append(f"line {n}: FILTER {d['FILTER']!r} is not an AAVSO filter code")
        if d["TRANS"].upper() not in ("YES", "NO"):
            problems.append(f"line {n}: TRANS must be YES or NO")
        if d["MTYPE"].upper() not in ("STD", "DIF", "ABS"):
            problems.append(f"line {n}: MTYPE must be STD, DIF or ABS")
        if d["MTYPE"].upper() == "DIF" and d["CNAME"].lower() == "na":
            problems.append(f"line {n}: a differential magnitude needs CNAME")
        if d["GROUP"].lower() != "na" and not d["GROUP"].isdigit():
            problems.append(f"line {n}: GROUP must be an integer or na")
    return problems


# ----------------------------------------------------------------------------- exoplanet


def exoplanet_report(
    name: str,
    lc: Any,
    results: Any,
    record: dict[str, Any],
    settings: dict[str, Any],
    *,
    observer_code: str | None,
    filter_code_: str,
    planet_name: str | None = None,
    obstype: str = "CCD",
) -> str:
    """AAVSO Exoplanet Report text for one target: undetrended Rnflux, BJD_TDB, detrend data."""
    obscode = _check_obscode(observer_code)
    if len(obscode) > 5:
        raise ExportError(f"observer code {obscode!r}: the exoplanet format allows 5 characters")
    if obstype not in ("CCD", "DSLR"):
        raise ExportError(f"OBSTYPE {obstype!r}: the exoplanet format takes CCD or DSLR")
    bjd = _column(lc, "BJD_TDB").astype(float)
    date_type = "BJD_TDB"
    if not np.isfinite(bjd).any():
        bjd, date_type = _column(lc, "JD_UTC").astype(float), "JD_UTC"
    valid = _column(lc, "valid").astype(bool) & np.isfinite(bjd)
    rel = _column(lc, "rel_flux").astype(float)
    err = _column(lc, "rel_flux_err").astype(float)
    fit = (record.get("objects", {}).get(name) or {}).get("fit")
    # normalise to the out-of-transit level: where the fitted transit model is 1
    oot = valid.copy()
    if fit is not None and "model" in lc.colnames and "detrended_flux" in lc.colnames:
        model = _column(lc, "model").astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            baseline = rel / _column(lc, "detrended_flux").astype(float)
            transit_only = model / baseline
        oot = valid & np.isfinite(transit_only) & (transit_only > 1 - 1e-6)
        if oot.sum() < 3:
            oot = valid
    norm = float(np.median(rel[oot])) if oot.any() else 1.0
    diff = rel / norm
    derr = err / norm

    detrend: list[tuple[str, np.ndarray]] = []
    am = _column(lc, "airmass").astype(float)
    if np.isfinite(am[valid]).all() and valid.any():
        detrend.append(("AIRMASS", am))
    terms = (fit or {}).get("terms", [])
    for term in terms:
        if len(detrend) >= 4:
            break
        if term == "fwhm" and "fwhm" in lc.colnames:
            detrend.append(("FWHM", _column(lc, "fwhm").astype(float)))
        elif term == "sky" and "sky" in lc.colnames:
            detrend.append(("SKY", _column(lc, "sky").astype(float)))
        elif term in ("x", "y"):
            sel = results[results["object"] == name]
            v = np.full(len(lc), np.nan)
            v[np.asarray(sel["frame"], int)] = _column(sel, term).astype(float)
            detrend.append((f"{term.upper()}_POSITION", v))
    exptimes = [i.get("exptime") for i in record.get("inputs", []) if i.get("status") == "ok"]
    exptimes = [e for e in exptimes if e is not None and math.isfinite(e)]
    exptime = float(np.median(exptimes)) if exptimes else float("nan")
    if not math.isfinite(exptime) or exptime <= 0:
        raise ExportError("no exposure time for the exoplanet report")
    if exptime > 600:
        raise ExportError(
            f"exposure time {exptime:g} s: the AAVSO exoplanet format takes at most 600 s"
        )
    bins = {tuple(i.get("binning") or (1, 1)) for i in record.get("inputs", [])
            if i.get("status") == "ok"}  # fmt: skip
    binning = next(iter(bins)) if len(bins) == 1 else (1, 1)
    lines = [
        "#TYPE=EXOPLANET",
        f"#OBSCODE={obscode}",
        f"#SOFTWARE={SOFTWARE}",
        "#DELIM=,",
        f"#DATE_TYPE={date_type}",
        f"#OBSTYPE={obstype}",
        f"#STAR_NAME={name}",
        f"#EXOPLANET_NAME={planet_name or name + ' b'}",
        f"#BINNING={binning[0]}x{binning[1]}",
        f"#EXPOSURE_TIME={exptime:g}",
        f"#FILTER={filter_code_}",
        "#DETREND_PARAMETERS=" + ",".join(d for d, _ in detrend),
        "#MEASUREMENT_TYPE=Rnflux",
    ]
    tr = settings.get("transit")
    if tr:
        u = tr.get("u") or []
        pri = [
            f"Period={tr['period']:.8g}",
            f"Rp/R*={tr['rp']:.6g}",
            f"a/R*={tr['a']:.6g}",
            f"inc={tr['inc']:.6g}",
        ] + [f"u{k}={v:.4g}" for k, v in enumerate(u, 1)]
        lines.append("#PRIORS=" + ",".join(pri)[:250])
    if fit is not None:
        p, e = fit.get("params", {}), fit.get("errors", {})
        res = []
        for key, label in (("t0", "Tc"), ("depth", "Depth"), ("rp", "Rp/R*"), ("a", "a/R*"),
                           ("inc", "inc"), ("t14_h", "T14_h")):  # fmt: skip
            if p.get(key) is not None:
                s = f"{label}={p[key]:.6f}"
                if e.get(key) is not None:
                    s += f" +/- {e[key]:.6f}"
                res.append(s)
        lines.append("#RESULTS=" + ",".join(res)[:250])
    comps = [c for c in record.get("comparison_stars", []) if c.get("used")]
    lines.append(
        f"#NOTES=tsphot ensemble of {len(comps)} comparison stars (Everett & Howell 2001); "
        f"aperture {record.get('apertures', {}).get('chosen_radius_px')} px; DIFF is the "
        "undetrended relative flux normalised out of transit"
    )
    lines.append("#" + ",".join(["DATE", "DIFF", "ERR"] + [f"DETREND_{k + 1}" for k in
                                                          range(len(detrend))]))  # fmt: skip
    for i in np.nonzero(valid)[0]:
        row = [
            f"{bjd[i]:.8f}",
            f"{diff[i]:.8f}",
            f"{derr[i]:.6f}" if np.isfinite(derr[i]) else "na",
        ]
        row += [f"{v[i]:.6f}" if np.isfinite(v[i]) else "na" for _, v in detrend]
        lines.append(",".join(row))
    text = "\n".join(lines) + "\n"
    problems = validate_exoplanet(text)
    if problems:
        raise ExportError("AAVSO exoplanet report breaks the format: " + "; ".join(problems[:5]))
    return text


def validate_exoplanet(text: str) -> list[str]:
    """Every way the text breaks the AAVSO Exoplanet Report format (empty if none)."""
    problems: list[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    params, _ = _params(lines)
    required = ("TYPE", "OBSCODE", "SOFTWARE", "DELIM", "DATE_TYPE", "OBSTYPE", "STAR_NAME",
                "EXOPLANET_NAME", "BINNING", "EXPOSURE_TIME", "FILTER", "DETREND_PARAMETERS",
                "MEASUREMENT_TYPE")  # fmt: skip
    for key in required:
        if key not in params:
            problems.append(f"missing parameter #{key}= (parameters are case sensitive)")
    if params.get("TYPE") != "EXOPLANET":
        problems.append("#TYPE must be EXOPLANET")
    if not params.get("OBSCODE", "").strip() or len(params.get("OBSCODE", "")) > 5:
        problems.append("#OBSCODE must be an observer code of at most 5 characters")
    if len(params.get("SOFTWARE", "")) > 255:
        problems.append("#SOFTWARE longer than 255 characters")
    if params.get("DELIM") not in EXO_DELIMS:
        problems.append(f"#DELIM {params.get('DELIM')!r} is not one of , ; | : ! / ? tab")
        return problems
    delim = "\t" if params["DELIM"] == "tab" else params["DELIM"]
    if params.get("DATE_TYPE") not in EXO_DATE_TYPES:
        problems.append(f"#DATE_TYPE must be one of {', '.join(sorted(EXO_DATE_TYPES))}")
    if params.get("OBSTYPE") not in ("CCD", "DSLR"):
        problems.append("#OBSTYPE must be CCD or DSLR")
    for key in ("STAR_NAME", "EXOPLANET_NAME"):
        if not params.get(key, "").strip() or len(params.get(key, "")) > 100:
            problems.append(f"#{key} must be 1 to 100 characters")
    if params.get("BINNING") not in ("1x1", "2x2", "3x3", "4x4"):
        problems.append("#BINNING must be 1x1, 2x2, 3x3 or 4x4")
    try:
        if not 0 < float(params.get("EXPOSURE_TIME", "nan")) <= 600:
            problems.append("#EXPOSURE_TIME must be more than 0 and at most 600 s")
    except ValueError:
        problems.append("#EXPOSURE_TIME is not a number of seconds")
    if params.get("FILTER", "").upper() not in FILTERS:
        problems.append(f"#FILTER {params.get('FILTER')!r} is not an AAVSO filter code")
    detrend = [d for d in params.get("DETREND_PARAMETERS", "").split(",") if d.strip()]
    if len(detrend) > 4 or len(params.get("DETREND_PARAMETERS", "")) > 100:
        problems.append("#DETREND_PARAMETERS: at most 4 names in 100 characters")
    if params.get("MEASUREMENT_TYPE") not in EXO_MEASUREMENT_TYPES:
        problems.append("#MEASUREMENT_TYPE must be Rnflux or Dmag")
    for key, lim in (("SECONDARY_OBSCODES", 60), ("PRIORS", 250), ("RESULTS", 250)):
        if len(params.get(key, "")) > lim:
            problems.append(f"#{key} longer than {lim} characters")
    data = [(n, line) for n, line in enumerate(lines, 1) if not line.startswith("#")]
    if not data:
        problems.append("no measurement lines")
    for n, line in data:
        if not line.strip():
            problems.append(f"line {n}: blank line")
            continue
        f = line.split(delim)
        if len(f) != 3 + len(detrend):
            problems.append(f"line {n}: {len(f)} fields, expected {3 + len(detrend)}")
            continue
        if not _is_decimal(f[0]):
            problems.append(f"line {n}: DATE {f[0]!r} is not a number")
        if not _is_decimal(f[1], 15, 8):
            problems.append(f"line {n}: DIFF {f[1]!r} is not a decimal(15,8)")
        for k, v in enumerate(f[2:]):
            if v.lower() in ("na", "n/a", ""):
                continue
            if not _is_decimal(v, 12, 6):
                what = "ERR" if k == 0 else f"DETREND_{k}"
                problems.append(f"line {n}: {what} {v!r} is not a decimal(12,6)")
    return problems
