"""AstroImageJ interchange: its measurements table out, its aperture and radec files in and out.

Pixel conventions. tsphot positions are 0-based with a pixel's centre at integer coordinates,
y up (numpy ``data[y, x]``). AstroImageJ keeps two: FITS (1-based, y up), written in its
tables as ``X(FITS)``/``Y(FITS)``, and ImageJ (a pixel's centre at +0.5, y down from the top
row), written as ``X(IJ)``/``Y(IJ)`` and used in ``.apertures`` files. Its WCS code converts
FITS to ImageJ as ``x_ij = x_fits - 1 + 0.5`` and ``y_ij = NAXIS2 - y_fits + 0.5``, so

    x_ij = x + 0.5,    y_ij = NAXIS2 - y - 0.5,    x_fits = x + 1,    y_fits = y + 1.

Aperture files written by scripts sometimes prefix the coordinate list with ``FITS``; those
values are FITS coordinates.

Apertures are named as AstroImageJ names them: ``T`` for a target (not a reference star),
``C`` for a comparison (reference) star, followed by the aperture's 1-based position in the
file: T1, C2, C3, …
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tsphot.errors import SettingsError

NO_MAG = 99.999  # AstroImageJ: magnitude not known


# ----------------------------------------------------------------------------- conversions


def ij_to_pixel(x_ij: float, y_ij: float, height: int) -> tuple[float, float]:
    """ImageJ coordinates → tsphot 0-based pixels."""
    return x_ij - 0.5, height - y_ij - 0.5


def pixel_to_ij(x: float, y: float, height: int) -> tuple[float, float]:
    """tsphot 0-based pixels → ImageJ coordinates."""
    return x + 0.5, height - y - 0.5


def _hours_or_sexagesimal(text: str) -> float:
    """RA in hours (decimal or sexagesimal) → degrees."""
    return 15.0 * _sexagesimal(text)


def _sexagesimal(text: str) -> float:
    text = text.strip()
    parts = [p for p in re.split(r"[:\s]+", text) if p]
    if not parts:
        raise ValueError("empty coordinate")
    sign = -1.0 if parts[0].startswith("-") else 1.0
    value = abs(float(parts[0]))
    for k, p in enumerate(parts[1:3], start=1):
        value += abs(float(p)) / 60.0**k
    return sign * value


def _sexa_out(value: float, hours: bool) -> str:
    v = value / 15.0 if hours else value
    sign = "-" if v < 0 else ("" if hours else "+")
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = (v - d - m / 60) * 3600
    if round(s, 3 if hours else 2) >= 60:
        s, m = 0.0, m + 1
    if m >= 60:
        m, d = m - 60, d + 1
    return f"{sign}{d:02d}:{m:02d}:{s:0{6 if hours else 5}.{3 if hours else 2}f}"


# ----------------------------------------------------------------------------- reading


def _read_properties(path: Path) -> dict[str, str]:
    """A Java properties file (as AstroImageJ writes .apertures): key=value, # comments."""
    props: dict[str, str] = {}
    text = path.read_text(encoding="latin-1")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"((?:\\.|[^=:\s\\])+)\s*[=:\s]\s*(.*)$", line)
        if not m:
            continue
        key = re.sub(r"\\(.)", r"\1", m.group(1)).lstrip(".")
        props[key] = re.sub(r"\\(.)", r"\1", m.group(2)).strip()
    return props


def _split(value: str | None) -> list[str]:
    if value is None or not value.strip():
        return []
    return [v.strip() for v in value.split(",")]


def read_apertures(path: str | Path, height: int) -> dict[str, Any]:
    """Objects and radii of an AstroImageJ ``.apertures`` file.

    Returns ``{"objects": [{"name", "role", "x", "y", "ra", "dec", "mag"}...],
    "aperture": r or None, "annulus": (r1, r2) or None}``; positions are tsphot pixels.
    """
    path = Path(path)
    try:
        props = _read_properties(path)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the AstroImageJ apertures file ({exc})") from None
    xs_raw, ys_raw = props.get("multiaperture.xapertures"), props.get("multiaperture.yapertures")
    if not xs_raw or not ys_raw:
        raise SettingsError(
            f"{path}: no multiaperture.xapertures / yapertures: not an AstroImageJ apertures file"
        )
    fits_coords = xs_raw.upper().startswith("FITS") or ys_raw.upper().startswith("FITS")
    if fits_coords:
        xs_raw, ys_raw = (v[4:] if v.upper().startswith("FITS") else v for v in (xs_raw, ys_raw))
    try:
        xs = [float(v) for v in _split(xs_raw)]
        ys = [float(v) for v in _split(ys_raw)]
    except ValueError as exc:
        raise SettingsError(f"{path}: aperture positions are not numbers ({exc})") from None
    if len(xs) != len(ys) or not xs:
        raise SettingsError(f"{path}: {len(xs)} x positions but {len(ys)} y positions")
    n = len(xs)
    isref = _split(props.get("multiaperture.isrefstar"))
    refs = [v.lower() == "true" for v in isref] if len(isref) == n else [i > 0 for i in range(n)]
    mags_raw = _split(props.get("multiaperture.absmagapertures"))
    ras = _split(props.get("multiaperture.raapertures"))
    decs = _split(props.get("multiaperture.decapertures"))
    objects = []
    for i in range(n):
        if fits_coords:
            x, y = xs[i] - 1.0, ys[i] - 1.0
        else:
            x, y = ij_to_pixel(xs[i], ys[i], height)
        mag = None
        if len(mags_raw) == n:
            try:
                mv = float(mags_raw[i])
                mag = mv if mv < 99 else None
            except ValueError:
                mag = None
        ra = dec = None
        if len(ras) == n and len(decs) == n and ras[i] and decs[i]:
            try:
                ra, dec = float(ras[i]), float(decs[i])
            except ValueError:
                ra = dec = None
        role = "comp" if refs[i] else "target"
        name = f"{'C' if refs[i] else 'T'}{i + 1}"
        objects.append(
            {"name": name, "role": role, "x": x, "y": y, "ra": ra, "dec": dec, "mag": mag}
        )
    out: dict[str, Any] = {"objects": objects, "aperture": None, "annulus": None}
    try:
        if "aperture.radius" in props:
            out["aperture"] = float(props["aperture.radius"])
        if "aperture.rback1" in props and "aperture.rback2" in props:
            out["annulus"] = (float(props["aperture.rback1"]), float(props["aperture.rback2"]))
    except ValueError:
        pass
    return out


def read_radec(path: str | Path) -> list[dict[str, Any]]:
    """Objects of an AstroImageJ radec file: ``RA(hours), Dec(deg), ref, centroid, mag``.

    The reference-star flag missing means: the first line is the target, the others
    comparison stars (AstroImageJ's rule). RA and Dec are returned in degrees.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the AstroImageJ radec file ({exc})") from None
    objects: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 2:
            raise SettingsError(f"{path}:{lineno}: expected 'RA, Dec[, ref, centroid, mag]'")
        try:
            ra = _hours_or_sexagesimal(cols[0])
            dec = _sexagesimal(cols[1])
        except ValueError:
            raise SettingsError(
                f"{path}:{lineno}: {cols[0]!r}, {cols[1]!r} is not RA (hours), Dec (degrees)"
            ) from None
        i = len(objects)
        if len(cols) > 2 and cols[2] in ("0", "1"):
            ref = cols[2] == "1"
        else:
            ref = i > 0
        mag = None
        if len(cols) > 4 and cols[4]:
            try:
                mv = float(cols[4])
                mag = mv if mv < 99 else None
            except ValueError:
                mag = None
        objects.append(
            {
                "name": f"{'C' if ref else 'T'}{i + 1}",
                "role": "comp" if ref else "target",
                "x": None,
                "y": None,
                "ra": ra,
                "dec": dec,
                "mag": mag,
            }
        )
    if not objects:
        raise SettingsError(f"{path}: no RA/Dec lines in the AstroImageJ radec file")
    return objects


def apply_to_settings(settings: Any, height: int) -> tuple[Any, dict[str, Any] | None]:
    """Settings with the objects of its AstroImageJ files added as targets and comparisons.

    Returns new settings (the AIJ file settings cleared, so the result replays without the
    files) and a note for run.json, or the settings unchanged and None when no file is given.
    """
    from tsphot.ingest import file_sha256
    from tsphot.settings import ObjectSpec

    if not settings.aij_apertures and not settings.aij_radec:
        return settings, None
    targets, comps = list(settings.targets), list(settings.comps)
    update: dict[str, Any] = {"aij_apertures": None, "aij_radec": None}
    note: dict[str, Any] = {"files": []}
    found: list[dict[str, Any]] = []
    if settings.aij_apertures:
        ap = read_apertures(settings.aij_apertures, height)
        found += ap["objects"]
        note["files"].append(
            {"path": settings.aij_apertures, "sha256": file_sha256(settings.aij_apertures)}
        )
        if settings.aperture is None and not settings.radii and ap["aperture"]:
            update["aperture"] = ap["aperture"]
            note["aperture_from_file"] = ap["aperture"]
        if settings.annulus is None and ap["annulus"]:
            r_ap = update.get("aperture", settings.aperture) or 0.0
            if ap["annulus"][0] >= r_ap and ap["annulus"][1] > ap["annulus"][0]:
                update["annulus"] = ap["annulus"]
                note["annulus_from_file"] = list(ap["annulus"])
    if settings.aij_radec:
        rd = read_radec(settings.aij_radec)
        note["files"].append(
            {"path": settings.aij_radec, "sha256": file_sha256(settings.aij_radec)}
        )
        if settings.aij_apertures:
            # both files describe the same apertures: the radec file's sky positions win
            # for the objects it lists, in order
            for obj, sky in zip(found, rd, strict=False):
                obj["ra"], obj["dec"] = sky["ra"], sky["dec"]
                obj["mag"] = sky["mag"] if sky["mag"] is not None else obj["mag"]
        else:
            found += rd
    taken = {o.name for o in [*targets, *comps, *settings.checks]}
    for obj in found:
        if obj["name"] in taken:
            raise SettingsError(
                f"AstroImageJ aperture {obj['name']} has the name of an object given in the "
                "settings; rename that object"
            )
        spec = ObjectSpec(
            name=obj["name"],
            x=obj["x"],
            y=obj["y"],
            ra=obj["ra"],
            dec=obj["dec"],
            mag=obj["mag"],
        )
        (targets if obj["role"] == "target" else comps).append(spec)
    update["targets"], update["comps"] = targets, comps
    note["objects"] = [o["name"] for o in found]
    new = settings.model_copy(update=update)
    # re-validate (an aperture from the file must still sit inside the annulus)
    return type(settings).model_validate(new.model_dump()), note


# ----------------------------------------------------------------------------- writing


def aperture_names(roles: list[str]) -> list[str]:
    """AstroImageJ names: T (target or check) or C (comparison) + 1-based position."""
    return [f"{'C' if r == 'comp' else 'T'}{i + 1}" for i, r in enumerate(roles)]


def write_apertures(
    path: str | Path,
    objects: list[dict[str, Any]],
    height: int,
    radius: float,
    annulus: tuple[float, float],
) -> None:
    """An AstroImageJ ``.apertures`` file for the objects (dicts with role, x, y, ra, dec, mag)."""
    xs, ys, refs, ras, decs, mags = [], [], [], [], [], []
    for o in objects:
        xi, yi = pixel_to_ij(o["x"], o["y"], height)
        xs.append(f"{xi:.4f}")
        ys.append(f"{yi:.4f}")
        refs.append("true" if o["role"] == "comp" else "false")
        ras.append("" if o.get("ra") is None else f"{o['ra']:.8f}")
        decs.append("" if o.get("dec") is None else f"{o['dec']:.8f}")
        m = o.get("mag")
        mags.append(f"{m if m is not None else NO_MAG}")
    lines = [
        "#AstroImageJ Saved Apertures",
        "#written by tsphot (ImageJ pixel coordinates: x = column + 0.5, y = NAXIS2 - row - 0.5)",
        f".multiaperture.naperturesmax={max(len(objects), 1)}",
        ".multiaperture.isrefstar=" + ",".join(refs),
        ".multiaperture.xapertures=" + ",".join(xs),
        ".multiaperture.yapertures=" + ",".join(ys),
        ".multiaperture.centroidstar=" + ",".join("true" for _ in objects),
        ".multiaperture.absmagapertures=" + ",".join(mags),
        f".aperture.radius={radius}",
        f".aperture.rback1={annulus[0]}",
        f".aperture.rback2={annulus[1]}",
    ]
    if all(r for r in ras):
        lines.insert(6, ".multiaperture.raapertures=" + ",".join(ras))
        lines.insert(7, ".multiaperture.decapertures=" + ",".join(decs))
    _write_lines(path, lines)


def write_radec(path: str | Path, objects: list[dict[str, Any]]) -> None:
    """An AstroImageJ radec file (RA in sexagesimal hours, Dec in sexagesimal degrees)."""
    lines = [
        "#RA in decimal or sexagesimal HOURS",
        "#Dec in decimal or sexagesimal DEGREES",
        "#Ref Star=0,1,missing (0=target star, 1=ref star, missing->first ap=target, others=ref)",
        "#Centroid=0,1,missing (0=do not centroid, 1=centroid, missing=centroid)",
        "#Apparent Magnitude or missing (value = apparent magnitude, or value > 99 or missing = "
        "no mag info)",
        "#Add one comma separated line per aperture in the following format:",
        "#RA, Dec, Ref Star, Centroid, Magnitude",
    ]
    for o in objects:
        if o.get("ra") is None or o.get("dec") is None:
            continue
        m = o.get("mag")
        lines.append(
            f"{_sexa_out(o['ra'], True)}, {_sexa_out(o['dec'], False)}, "
            f"{1 if o['role'] == 'comp' else 0}, 1, {m if m is not None else NO_MAG}"
        )
    _write_lines(path, lines)


def _write_lines(path: str | Path, lines: list[str]) -> None:
    """Write text lines atomically (no half-written file after a crash)."""
    from tsphot.products.export import atomic_write

    atomic_write(Path(path), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def measurements_table(
    results: Any, curves: dict[str, Any], record: dict[str, Any]
) -> tuple[Any, list[str]]:
    """An AstroImageJ-style measurements table (one row per exposure) and its column order.

    ``rel_flux_<ap>`` follows AstroImageJ: an aperture's net counts over the total net counts of
    the comparison stars (a comparison star's own counts left out of its total), with
    ``tot_C_cnts`` summed over the comparison stars the ensemble kept. Counts are ADU
    (electrons / gain). A frame in which a kept comparison star was not measured has NaN
    there, rather than a silent jump. tsphot's own weighted-ensemble curve is alongside as
    ``tsphot_rel_flux_<ap>``.
    """
    from astropy.table import Table

    gain = float(record.get("gain_e_per_adu") or 1.0)
    frames = np.unique(np.asarray(results["frame"]))
    first = results[results["frame"] == frames[0]]
    names = [str(n) for n in first["object"]]
    roles = [str(r) for r in first["role"]]
    # targets first, then checks, then comparison stars, each kept in the run's order
    order = sorted(range(len(names)), key=lambda i: {"target": 0, "check": 1}.get(roles[i], 2))
    names = [names[i] for i in order]
    roles = [roles[i] for i in order]
    ap = dict(zip(names, aperture_names(roles), strict=True))
    used = {c["name"] for c in record.get("comparison_stars", []) if c.get("used")}
    nf = len(frames)

    def col(name: str, key: str) -> np.ndarray:
        sel = results[results["object"] == name]
        v = np.asarray(getattr(sel[key], "value", sel[key]), dtype=float)
        out = np.full(nf, np.nan)
        out[np.searchsorted(frames, np.asarray(sel["frame"]))] = v
        return out

    def ok(name: str) -> np.ndarray:
        sel = results[results["object"] == name]
        out = np.zeros(nf, bool)
        out[np.searchsorted(frames, np.asarray(sel["frame"]))] = np.asarray(sel["status"]) == "ok"
        return out

    flux = {n: np.where(ok(n), col(n, "flux") / gain, np.nan) for n in names}
    ferr = {n: np.where(ok(n), col(n, "flux_err") / gain, np.nan) for n in names}
    comps = [n for n, r in zip(names, roles, strict=True) if r == "comp" and n in used]
    if comps:
        cstack = np.array([flux[n] for n in comps])
        estack = np.array([ferr[n] for n in comps])
        tot = cstack.sum(axis=0)  # NaN where a kept comparison star is missing
        tot_err = np.sqrt((estack**2).sum(axis=0))
    else:
        tot = np.full(nf, np.nan)
        tot_err = np.full(nf, np.nan)

    t = Table()
    sel0 = results[results["object"] == names[0]]
    pos0 = np.searchsorted(frames, np.asarray(sel0["frame"]))
    label = np.array([""] * nf, dtype=object)
    label[pos0] = [str(f) for f in sel0["file"]]
    t["Label"] = label.astype(str)
    t["slice"] = frames + 1
    jd = col(names[0], "jd_utc")
    t["J.D.-2400000"] = jd - 2400000.0
    t["JD_UTC"] = jd
    bjd = col(names[0], "bjd_tdb")
    t["BJD_TDB"] = bjd
    t["AIRMASS"] = col(names[0], "airmass")
    t["EXPTIME"] = col(names[0], "exptime")
    lc = next(iter(curves.values()), None)
    fwhm = np.full(nf, np.nan)
    if lc is not None and "fwhm" in lc.colnames:
        fwhm = np.asarray(getattr(lc["fwhm"], "value", lc["fwhm"]), dtype=float)
    t["FWHM_Mean"] = fwhm
    for n in names:
        a = ap[n]
        if roles[names.index(n)] == "comp":
            denom = tot - flux[n] if n in used else tot
            derr = np.sqrt(np.maximum(tot_err**2 - (ferr[n] ** 2 if n in used else 0.0), 0.0))
        else:
            denom, derr = tot, tot_err
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = flux[n] / denom
            rel_err = np.abs(rel) * np.hypot(ferr[n] / flux[n], derr / denom)
        t[f"rel_flux_{a}"] = rel
        t[f"rel_flux_err_{a}"] = rel_err
        with np.errstate(invalid="ignore", divide="ignore"):
            t[f"rel_flux_SNR_{a}"] = rel / rel_err
    for n in names:
        if n in curves:
            c = curves[n]
            t[f"tsphot_rel_flux_{ap[n]}"] = np.asarray(c["rel_flux"], dtype=float)
            t[f"tsphot_rel_flux_err_{ap[n]}"] = np.asarray(c["rel_flux_err"], dtype=float)
    t["tot_C_cnts"] = tot
    t["tot_C_err"] = tot_err
    height = int(record.get("image_shape", [0, 0])[0] or 0)
    for n in names:
        a = ap[n]
        x = col(n, "x")
        y = col(n, "y")
        t[f"Source-Sky_{a}"] = flux[n]
        t[f"Source_Error_{a}"] = ferr[n]
        with np.errstate(invalid="ignore", divide="ignore"):
            t[f"Source_SNR_{a}"] = flux[n] / ferr[n]
        t[f"Peak_{a}"] = col(n, "peak")
        t[f"Sky/Pixel_{a}"] = col(n, "sky_median")
        t[f"X(IJ)_{a}"] = x + 0.5
        t[f"Y(IJ)_{a}"] = height - y - 0.5 if height else np.full(nf, np.nan)
        t[f"X(FITS)_{a}"] = x + 1.0
        t[f"Y(FITS)_{a}"] = y + 1.0
        t[f"N_Sky_Pixels_{a}"] = col(n, "sky_area")
    t["Source_Radius"] = col(names[0], "aperture_radius")
    t["Sky_Rad(min)"] = col(names[0], "annulus_inner")
    t["Sky_Rad(max)"] = col(names[0], "annulus_outer")
    t.meta["apertures"] = {n: ap[n] for n in names}
    return t, list(t.colnames)


def write_measurements(table: Any, path: str | Path) -> None:
    """Write the measurements table tab-separated, as AstroImageJ saves its tables."""
    from tsphot.products.export import atomic_write

    def fmt(v: Any) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, (int, np.integer)):
            return str(int(v))
        v = float(v)
        return "NaN" if not math.isfinite(v) else repr(v)

    header = "\t".join([" ", *table.colnames])
    rows = [
        "\t".join([str(i + 1), *(fmt(row[c]) for c in table.colnames)])
        for i, row in enumerate(table)
    ]
    text = "\n".join([header, *rows]) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_measurements(path: str | Path) -> Any:
    """Read a tab-separated AstroImageJ measurements table (its first, unnamed column dropped)."""
    from astropy.table import Table

    lines = Path(path).read_text().splitlines()
    cols = lines[0].split("\t")[1:]
    data: dict[str, list[Any]] = {c: [] for c in cols}
    for line in lines[1:]:
        vals = line.split("\t")[1:]
        for c, v in zip(cols, vals, strict=True):
            data[c].append(v)
    t = Table()
    for c in cols:
        try:
            t[c] = np.array([float(v) for v in data[c]])
        except ValueError:
            t[c] = data[c]
    return t
