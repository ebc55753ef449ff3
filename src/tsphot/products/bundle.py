"""Stack bundles (the seed's stack file): one zip that replays a run exactly.

``tsphot bundle RUN_DIR --out FILE [--with-data]`` writes a zip holding

- ``manifest.json``: every exposure in the run's order with its path, SHA-256, role, status and
  key header values; the calibration masters; the products with their SHA-256 and role;
- ``settings.json`` (the run's full settings, AstroImageJ inputs already resolved into objects),
  ``versions.json`` (tsphot, Python and the dependencies);
- ``calibration/masters.npz`` when the run was calibrated (the masters, exactly as used);
- ``products/…``: every product of the run folder (tables, exports, pictures, report, records);
- with ``--with-data``: ``data/NNNNN/<file name>``, each exposure FITS-tile-compressed
  losslessly (RICE for integer pixels, GZIP without quantisation for floating point), checked
  after writing: the pixels read back are bit-identical and tsphot reads the same header values;
  a file that cannot be compressed so (not FITS, several images) is stored as it is.

``tsphot replay BUNDLE [--data-dir DIR]`` re-runs the reduction: from the exposures in the
bundle, or from DIR (files found by name), or from their original paths, each checked against
its SHA-256 first (an error names every missing or changed file). The new products are then
compared with the bundled ones: tables value by value (bit-identical numbers; in text, the
exposures' folders are ignored, as the replay reads them from elsewhere), text exports line by
line. The answer says they are identical, or which rows differ.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsphot import __version__
from tsphot.errors import InputError, TsphotError
from tsphot.ingest import file_sha256

BUNDLE_SCHEMA = "tsphot.bundle/1"
TABLE_SUFFIXES = (".ecsv", ".csv", ".fits", ".parquet")
TEXT_SUFFIXES = (".txt", ".tbl", ".apertures", ".radec")
# run.json sections that must replay identically (the rest holds paths, times and versions)
RUN_JSON_KEYS = ("objects", "comparison_stars", "apertures", "frames", "ensemble_iterations")


class ReplayError(TsphotError):
    """A bundle cannot be replayed (missing or changed exposures, a damaged bundle)."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _role(rel: str) -> str:
    suffix = Path(rel).suffix.lower()
    if rel in ("records.json", "run.json"):
        return "record"
    if suffix in (".png", ".pdf"):
        return "picture"
    if suffix == ".html":
        return "report"
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in TEXT_SUFFIXES:
        return "export"
    return "product"


def pixels_sha256(path: str) -> str:
    """SHA-256 of an exposure's pixels as tsphot reads them (float32 ADU)."""
    from tsphot.ingest import read_pixels

    data, _ = read_pixels(path)
    return _sha256_bytes(np.ascontiguousarray(data).tobytes())


def compress_exposure(src: str, dst: Path) -> str:
    """Write src tile-compressed (losslessly) to dst and check it; return the method used.

    Falls back to a plain copy (method "none") when src is not a single-image FITS file or the
    compressed copy would not read back identically.
    """
    import warnings

    from astropy.io import fits

    from tsphot.ingest import read_header

    dst.parent.mkdir(parents=True, exist_ok=True)
    method = "none"
    try:
        with fits.open(src, memmap=False) as hdul:
            images = [h for h in hdul if h.data is not None and h.data.ndim == 2]
            if len(images) == 1:
                hdu = images[0]
                data = hdu.data
                header = hdu.header.copy()
                if data.dtype.kind in "iu":
                    comp = fits.CompImageHDU(data, header=header, compression_type="RICE_1")
                    method = "RICE_1"
                else:
                    comp = fits.CompImageHDU(
                        data, header=header, compression_type="GZIP_2", quantize_level=0.0
                    )
                    method = "GZIP_2 (no quantisation)"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(dst, overwrite=True)
                with fits.open(dst, memmap=False) as back:
                    same = np.array_equal(back[1].data, data, equal_nan=True)
                a, b = read_header(src), read_header(str(dst))
                same = same and {**a.to_dict(), "path": ""} == {**b.to_dict(), "path": ""}
                if not same:
                    method = "none"
    except Exception:
        method = "none"
    if method == "none":
        shutil.copyfile(src, dst)
    return method


@dataclass
class BundleResult:
    """What bundling wrote."""

    path: Path
    sha256: str
    size_bytes: int
    n_entries: int
    with_data: bool
    record: Any = None


def make_bundle(run_dir: str | Path, out: str | Path, with_data: bool = False) -> BundleResult:
    """Write the stack bundle of a finished run (see the module doc)."""
    from tsphot import records

    run_dir = Path(run_dir)
    out = Path(out)
    if not (run_dir / "run.json").exists():
        raise InputError(f"{run_dir}: not a tsphot run folder (no run.json)")
    run = json.loads((run_dir / "run.json").read_text())
    recs = None
    if (run_dir / "records.json").exists():
        recs = records.RunRecords.read(run_dir / "records.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    exposures = []
    problems = []
    tmpdir = Path(tempfile.mkdtemp(prefix="tsphot-bundle-"))
    try:
        tmp_zip = tmpdir / "bundle.zip"
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for k, inp in enumerate(run.get("inputs", [])):
                path = inp.get("abs_path") or inp["path"]
                entry: dict[str, Any] = {
                    "order": k,
                    "path": inp["path"],
                    "abs_path": path,
                    "file": Path(inp["path"]).name,
                    "sha256": inp.get("sha256"),
                    "role": "science",
                    "status": inp.get("status"),
                    "reason": inp.get("reason"),
                    "jd_utc_mid": inp.get("jd_utc_mid"),
                    "header": inp.get("header") or {},
                    "stored": None,
                }
                if with_data and inp.get("sha256") is not None:
                    if not os.path.exists(path):
                        problems.append(f"{path}: missing (it was read by the run)")
                    elif file_sha256(path) != inp["sha256"]:
                        problems.append(f"{path}: changed since the run (SHA-256 differs)")
                    else:
                        stored = f"data/{k:05d}/{entry['file']}"
                        local = tmpdir / stored
                        entry["compression"] = compress_exposure(path, local)
                        entry["stored"] = stored
                        entry["stored_sha256"] = file_sha256(str(local))
                        try:
                            entry["pixels_sha256"] = pixels_sha256(path)
                        except TsphotError:
                            entry["pixels_sha256"] = None
                        z.write(local, stored, compress_type=zipfile.ZIP_STORED)
                        local.unlink()
                exposures.append(entry)
            if problems:
                raise ReplayError("cannot bundle the exposures: " + "; ".join(problems))
            calibration = []
            sets = sorted(run_dir.glob("masters_*.npz"))
            masters_path = run_dir / "masters.npz"
            if not masters_path.exists() and len(sets) == 1:
                masters_path = sets[0]  # one set of masters served every frame
            elif not masters_path.exists() and len(sets) > 1:
                raise ReplayError(
                    f"{run_dir}: {len(sets)} sets of masters were used (frames calibrated with "
                    "different masters); a bundle replays one set only: reduce such nights "
                    "per set of masters"
                )
            if masters_path.exists():
                z.write(masters_path, "calibration/masters.npz")
                calibration.append(
                    {
                        "path": "calibration/masters.npz",
                        "sha256": file_sha256(str(masters_path)),
                        "role": "masters",
                        "made_from": run.get("calibration", []),
                    }
                )
            products = []
            for f in sorted(run_dir.rglob("*")):
                rel = f.relative_to(run_dir).as_posix()
                if not f.is_file() or any(p.startswith(".") for p in Path(rel).parts):
                    continue
                if rel == "masters.npz" or (rel.startswith("masters_") and rel.endswith(".npz")):
                    continue
                if rel.startswith(("calibration/", "calibrated/")):
                    # the calibration library the run built from raw frames: its masters are
                    # carried above as used; the library itself is not a product to replay
                    continue
                z.write(f, f"products/{rel}")
                products.append({"path": rel, "sha256": file_sha256(str(f)), "role": _role(rel)})
            settings = run.get("settings", {})
            versions = run.get("versions", {})
            manifest = {
                "schema": BUNDLE_SCHEMA,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                "tsphot_version": __version__,
                "with_data": with_data,
                "run_dir": str(run_dir.resolve()),
                "tool_id": str(recs.tool.id) if recs else None,
                "exposures": exposures,
                "calibration": calibration,
                "products": products,
                "settings": "settings.json",
                "versions": "versions.json",
            }
            z.writestr("manifest.json", json.dumps(manifest, indent=2))
            z.writestr("settings.json", json.dumps(settings, indent=2))
            z.writestr("versions.json", json.dumps(versions, indent=2))
            n_entries = len(z.namelist())
        shutil.move(str(tmp_zip), out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    sha = file_sha256(str(out))
    result = BundleResult(out, sha, out.stat().st_size, n_entries, with_data)
    if recs is not None:
        sf = records.TimeSeriesPhotometryStackFile(
            tool_id=recs.tool.id,
            stack_id=recs.stack.id if recs.stack else None,
            path=str(out.resolve()),
            sha256=sha,
            size_bytes=result.size_bytes,
            with_data=with_data,
            n_entries=n_entries,
        )
        recs.stack_files.append(sf)
        recs.tool.stack_file_ids.append(sf.id)
        recs.write(run_dir / "records.json")
        result.record = sf
    return result


# ----------------------------------------------------------------------------- replay


@dataclass
class FileComparison:
    """How one replayed product compares with the bundled one."""

    path: str
    identical: bool
    byte_identical: bool
    differences: list[str] = field(default_factory=list)


@dataclass
class ReplayResult:
    """The outcome of a replay."""

    out: Path
    source: str
    compared: list[FileComparison]

    @property
    def identical(self) -> bool:
        """Every compared product is identical."""
        return all(c.identical for c in self.compared)

    def summary(self) -> str:
        """What a person reads: identical, or which files and rows differ."""
        n = len(self.compared)
        if self.identical:
            nbytes = sum(c.byte_identical for c in self.compared)
            return (
                f"replay identical: {n} products compared ({nbytes} byte for byte, the rest "
                f"equal value for value apart from the exposures' folders), from {self.source}; "
                f"new products in {self.out}"
            )
        lines = [f"replay DIFFERS from the bundle (exposures from {self.source}):"]
        for c in self.compared:
            if not c.identical:
                lines.append(f"  {c.path}:")
                lines += [f"    {d}" for d in c.differences[:20]]
                if len(c.differences) > 20:
                    lines.append(f"    … and {len(c.differences) - 20} more")
        lines.append(f"new products in {self.out}")
        return "\n".join(lines)


def _normaliser(paths: list[str]):
    """Replace each exposure path (original or replayed) by its file name in text."""
    pairs = sorted({p for p in paths if p}, key=len, reverse=True)
    names = [(p, Path(p).name) for p in pairs]

    def norm(text: str) -> str:
        for p, name in names:
            if p in text:
                text = text.replace(p, name)
        return text

    return norm


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
        return (np.isnan(a) and np.isnan(b)) or a == b
    return bool(a == b)


def compare_tables(path_a: Path, path_b: Path, fmt: str, norm: Any) -> list[str]:
    """Rows and columns in which two tables differ (empty if none)."""
    from tsphot.products.export import read_table_as

    a, b = read_table_as(path_a, fmt), read_table_as(path_b, fmt)
    diffs = []
    if a.colnames != b.colnames:
        diffs.append(f"columns differ: {a.colnames} vs {b.colnames}")
        return diffs
    if len(a) != len(b):
        diffs.append(f"{len(a)} rows in the bundle, {len(b)} in the replay")
        return diffs
    for name in a.colnames:
        ca = np.asarray(getattr(a[name], "value", a[name]))
        cb = np.asarray(getattr(b[name], "value", b[name]))
        if getattr(a[name], "unit", None) != getattr(b[name], "unit", None):
            diffs.append(f"column {name}: unit {a[name].unit} vs {b[name].unit}")
        for i in range(len(a)):
            va, vb = ca[i], cb[i]
            if isinstance(va, str | bytes):
                va, vb = norm(str(va)), norm(str(vb))
            if not _same_value(va, vb):
                diffs.append(f"row {i}, column {name}: {va!r} (bundle) vs {vb!r} (replay)")
    return diffs


def compare_text(path_a: Path, path_b: Path, norm: Any) -> list[str]:
    """Lines in which two text files differ (empty if none)."""
    la = path_a.read_text().splitlines()
    lb = path_b.read_text().splitlines()
    diffs = []
    if len(la) != len(lb):
        diffs.append(f"{len(la)} lines in the bundle, {len(lb)} in the replay")
    for i, (x, y) in enumerate(zip(la, lb, strict=False), start=1):
        if norm(x) != norm(y):
            diffs.append(f"line {i}: {x[:120]!r} (bundle) vs {y[:120]!r} (replay)")
    return diffs


def _resolve_exposures(
    z: zipfile.ZipFile, manifest: dict, work: Path, data_dir: str | Path | None
) -> tuple[list[str], str]:
    """The exposure paths to replay from, in the run's order, each checked."""
    exposures = manifest["exposures"]
    problems: list[str] = []
    paths: list[str] = []
    missing_dir = work / "not-found"
    if data_dir is not None:
        data_dir = Path(data_dir)
        index: dict[str, list[Path]] = {}
        for f in data_dir.rglob("*"):
            if f.is_file():
                index.setdefault(f.name, []).append(f)
        source = f"{data_dir} (checked against the bundle's SHA-256)"
    elif manifest.get("with_data"):
        source = "the bundle's own copies of the exposures"
    else:
        source = "the exposures' original paths (checked against the bundle's SHA-256)"
    for e in exposures:
        if e.get("sha256") is None:  # never readable in the run: replay it as missing
            paths.append(str(missing_dir / e["file"]))
            continue
        if data_dir is not None:
            cands = index.get(e["file"], [])
            match = [c for c in cands if file_sha256(str(c)) == e["sha256"]]
            if match:
                paths.append(str(match[0]))
            elif cands:
                problems.append(f"{cands[0]}: changed since the run (SHA-256 differs)")
            else:
                problems.append(f"{e['file']}: missing from {data_dir}")
        elif manifest.get("with_data") and e.get("stored"):
            target = work / "data" / e["stored"]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(e["stored"]) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if file_sha256(str(target)) != e.get("stored_sha256"):
                problems.append(f"{e['stored']}: damaged in the bundle (SHA-256 differs)")
            elif e.get("pixels_sha256") and pixels_sha256(str(target)) != e["pixels_sha256"]:
                problems.append(f"{e['stored']}: pixels differ from the original exposure's")
            paths.append(str(target))
        else:
            p = e.get("abs_path") or e["path"]
            if not os.path.exists(p):
                problems.append(f"{p}: missing (give --data-dir with the exposures)")
            elif file_sha256(p) != e["sha256"]:
                problems.append(f"{p}: changed since the run (SHA-256 differs)")
            paths.append(p)
    if problems:
        raise ReplayError(
            f"cannot replay: {len(problems)} exposure(s) missing or changed:\n  "
            + "\n  ".join(problems)
        )
    return paths, source


def replay(
    bundle: str | Path,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    executor: str | None = None,
) -> ReplayResult:
    """Re-run a bundled reduction and compare its products with the bundled ones."""
    from tsphot import pipeline
    from tsphot.settings import Settings

    bundle = Path(bundle)
    if not bundle.exists():
        raise ReplayError(f"{bundle}: bundle not found")
    work = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tsphot-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        z = zipfile.ZipFile(bundle)
    except zipfile.BadZipFile:
        raise ReplayError(f"{bundle}: not a tsphot bundle (not a zip file)") from None
    with z:
        try:
            manifest = json.loads(z.read("manifest.json"))
            settings_data = json.loads(z.read("settings.json"))
        except KeyError as exc:
            raise ReplayError(f"{bundle}: not a tsphot bundle ({exc.args[0]})") from None
        if manifest.get("schema") != BUNDLE_SCHEMA:
            raise ReplayError(f"{bundle}: bundle schema {manifest.get('schema')!r} is unknown")
        paths, source = _resolve_exposures(z, manifest, work, data_dir)
        masters = None
        for c in manifest.get("calibration", []):
            if c.get("role") == "masters":
                masters = work / "calibration" / "masters.npz"
                masters.parent.mkdir(parents=True, exist_ok=True)
                masters.write_bytes(z.read(c["path"]))
                if file_sha256(str(masters)) != c["sha256"]:
                    raise ReplayError(f"{bundle}: {c['path']} damaged (SHA-256 differs)")
        bundled = work / "bundled"
        for p in manifest.get("products", []):
            dest = bundled / p["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = z.read(f"products/{p['path']}")
            if _sha256_bytes(data) != p["sha256"]:
                raise ReplayError(f"{bundle}: products/{p['path']} damaged (SHA-256 differs)")
            dest.write_bytes(data)
    settings_data.update(
        frames=paths,
        bias=[],
        dark=[],
        flat=[],
        masters=str(masters) if masters is not None else None,
        out=str(work / "replay"),
        quiet=True,
    )
    if executor is not None:
        settings_data["executor"] = executor
    settings = Settings.model_validate(settings_data)
    pipeline.run(settings)
    new = work / "replay"
    norm = _normaliser(
        [e.get("path") for e in manifest["exposures"]]
        + [e.get("abs_path") for e in manifest["exposures"]]
        + paths
    )
    compared = []
    for p in manifest.get("products", []):
        rel = p["path"]
        a, b = bundled / rel, new / rel
        suffix = Path(rel).suffix.lower()
        if p["role"] not in ("table", "export") and rel != "run.json":
            continue
        if not b.exists():
            compared.append(FileComparison(rel, False, False, ["not written by the replay"]))
            continue
        same_bytes = file_sha256(str(b)) == p["sha256"]
        if same_bytes:
            compared.append(FileComparison(rel, True, True))
            continue
        if rel == "run.json":
            ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
            diffs = [f"section {k!r} differs" for k in RUN_JSON_KEYS if ra.get(k) != rb.get(k)]
        elif suffix in TABLE_SUFFIXES:
            fmt = {".ecsv": "ecsv", ".csv": "csv", ".fits": "fits", ".parquet": "parquet"}[suffix]
            diffs = compare_tables(a, b, fmt, norm)
        else:
            diffs = compare_text(a, b, norm)
        compared.append(FileComparison(rel, not diffs, False, diffs))
    return ReplayResult(new, source, compared)
