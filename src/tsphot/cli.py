"""Command line: parse arguments into Settings and call the pipeline; no science here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tsphot import __version__
from tsphot.errors import TsphotError
from tsphot.settings import EXPORT_FORMATS


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != n:
        raise argparse.ArgumentTypeError(f"{what} needs {n} comma-separated numbers, got {text!r}")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not {n} numbers") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsphot",
        description="Time-series differential photometry: raw exposures to light curves.",
    )
    p.add_argument("--version", action="version", version=f"tsphot {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="reduce a night into light curves")
    r.add_argument("frames", nargs="*", help="science exposures: files, folders or globs")
    r.add_argument("--out", help="output folder (default tsphot-output)")
    r.add_argument("--config", help="settings TOML file (flags win over it)")
    r.add_argument("--bias", nargs="+", default=[], help="raw bias frames, or one master")
    r.add_argument("--dark", nargs="+", default=[], help="raw dark frames, or one master")
    r.add_argument("--flat", nargs="+", default=[], help="raw flat frames, or one master")
    r.add_argument(
        "--target",
        action="append",
        default=[],
        help="'NAME=X,Y' (0-based px, first exposure), 'NAME=HH:MM:SS.s,+DD:MM:SS' or "
        "'NAME=X,Y@HH:MM:SS.s,+DD:MM:SS'; a moving target: 'NAME=X1,Y1@TIME1;X2,Y2@TIME2' "
        "(px on the exposures nearest those times; JD or ISO UTC) or 'NAME=X,Y@TIME;rate=DX,DY' "
        "(px/h) or 'NAME=RA,DEC@TIME;skyrate=DRA,DDEC' (arcsec/h); repeatable",
    )
    r.add_argument(
        "--comp",
        action="append",
        default=[],
        help="comparison star 'X,Y' or 'NAME=RA,DEC'; repeatable; none: automatic",
    )
    r.add_argument("--check", action="append", default=[], help="check star, like --comp")
    r.add_argument("--aperture", type=float, help="aperture radius (px); default 1.6 × FWHM")
    r.add_argument(
        "--radii",
        type=lambda s: [float(v) for v in s.split(",")],
        help="more radii to try, e.g. 3,4,5,6; the lowest-scatter one is chosen",
    )
    r.add_argument("--annulus", type=lambda s: _floats(s, 2, "--annulus"), help="RIN,ROUT (px)")
    r.add_argument("--ellipticity", type=float, help="aperture ellipticity 1 - b/a")
    r.add_argument("--position-angle", type=float, help="aperture angle from +x (deg)")
    r.add_argument("--aperture-fwhm", type=float, help="aperture radius as k x FWHM")
    r.add_argument(
        "--radii-fwhm",
        type=lambda s: [float(v) for v in s.split(",")],
        help="more radii as multiples of the FWHM, e.g. 0.8,1,1.3,1.6",
    )
    r.add_argument(
        "--annulus-fwhm",
        type=lambda s: _floats(s, 2, "--annulus-fwhm"),
        help="KIN,KOUT: sky annulus as multiples of the FWHM",
    )
    r.add_argument(
        "--aperture-scaling",
        choices=["fixed", "per_frame"],
        help="FWHM-scaled apertures from the reference frame (fixed) or each frame's FWHM",
    )
    r.add_argument("--centroid", choices=["com", "windowed", "gauss"], help="centroid method (com)")
    r.add_argument(
        "--sky-method", choices=["median", "mean", "mode"], help="sky estimator (median)"
    )
    r.add_argument(
        "--no-mask-stars",
        action="store_true",
        help="keep other stars' pixels in the sky annulus (default: masked)",
    )
    r.add_argument(
        "--thin-cloud", type=float, help="flag frames below this fraction of median flux (0.7)"
    )
    r.add_argument(
        "--max-sky-ratio",
        type=float,
        help="leave out frames whose sky exceeds this multiple of the night's median (3)",
    )
    r.add_argument(
        "--site",
        type=lambda s: _floats(s, 3, "--site"),
        help="LAT,LON,ELEV_M (deg, east-positive deg, m)",
    )
    r.add_argument(
        "--aperture-diameter", type=float, help="telescope aperture (m), for scintillation"
    )
    r.add_argument("--gain", type=float, help="e-/ADU (overrides the header)")
    r.add_argument("--read-noise", type=float, help="e- (overrides the header)")
    r.add_argument("--saturation", type=float, help="ADU (overrides the header)")
    r.add_argument(
        "--min-transparency",
        type=float,
        help="leave out frames under thicker cloud than this fraction of median flux (0.3)",
    )
    r.add_argument("--outlier-sigma", type=float, help="flag points this many sigma off (5)")
    _calibration_flags(r)
    r.add_argument(
        "--save-calibrated",
        action="store_true",
        help="write calibrated frames (provenance in their headers) to OUT/calibrated",
    )
    r.add_argument(
        "--all-stars",
        action="store_true",
        help="field mode: light curves and variability indices of every star (field.ecsv)",
    )
    r.add_argument("--field-snr", type=float, help="field mode: faintest star's S/N (10)")
    r.add_argument(
        "--sky-apertures",
        type=int,
        help="empty-sky apertures measuring the background's real noise (50 with "
        "--all-stars, else 30; 0: off)",
    )
    r.add_argument(
        "--field-fap",
        type=float,
        help="field mode: false-alarm rate of a constant star flagged as variable (0.001)",
    )
    r.add_argument(
        "--executor",
        choices=["serial", "processes", "dask"],
        help="serial, a local process pool (default) or Dask (a local cluster unless --scheduler)",
    )
    r.add_argument("--workers", type=int, help="processes or local Dask workers (default: cores)")
    r.add_argument(
        "--scheduler", help="use the running Dask cluster at this address, e.g. tcp://HOST:8786"
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same --out, reusing the frames it measured",
    )
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument(
        "--export",
        action="append",
        default=[],
        choices=EXPORT_FORMATS,
        help="also write this format into OUT/exports; repeatable",
    )
    r.add_argument("--observer-code", help="your AAVSO observer code (AAVSO exports)")
    r.add_argument("--aavso-filter", help="AAVSO filter code; default from the FILTER keyword")
    r.add_argument(
        "--aij-apertures", help="AstroImageJ .apertures file: targets (T) and comparisons (C)"
    )
    r.add_argument("--aij-radec", help="AstroImageJ radec file: RA, Dec, ref flag, …, mag")
    r.add_argument("--masters", help="a tsphot masters.npz to calibrate with")

    e = sub.add_parser("export", help="write a finished run's products in another format")
    e.add_argument("run_dir", help="the --out folder of a finished `tsphot run`")
    e.add_argument(
        "--format",
        action="append",
        required=True,
        choices=EXPORT_FORMATS,
        dest="formats",
        help="format to write; repeatable",
    )
    e.add_argument("--out", help="folder for the files (default RUN_DIR/exports)")
    e.add_argument("--observer-code", help="AAVSO observer code (overrides the run's)")
    e.add_argument("--aavso-filter", help="AAVSO filter code (overrides the run's)")
    e.add_argument("--chart", help="AAVSO chart / sequence id")
    e.add_argument("--exoplanet-name", help="planet name for the exoplanet report")

    b = sub.add_parser("bundle", help="write a stack bundle (zip) that replays a run exactly")
    b.add_argument("run_dir", help="the --out folder of a finished `tsphot run`")
    b.add_argument("--out", required=True, help="bundle file to write (.zip)")
    b.add_argument(
        "--with-data",
        action="store_true",
        help="carry the exposures too (FITS tile compression, lossless)",
    )

    p_ = sub.add_parser("replay", help="re-run a bundle and check the products are identical")
    p_.add_argument("bundle", help="a bundle written by `tsphot bundle`")
    p_.add_argument("--data-dir", help="folder holding the exposures (found by file name)")
    p_.add_argument("--out", help="work folder (default: a new temporary folder)")
    p_.add_argument("--executor", choices=["serial", "processes"])

    c = sub.add_parser(
        "calibrate",
        help="build a calibration library from raw frames (sorted by IMAGETYP); "
        "optionally calibrate the light frames",
    )
    c.add_argument("frames", nargs="+", help="raw frames of any kind: files, folders or globs")
    c.add_argument("--library", required=True, help="library folder (created or added to)")
    c.add_argument("--bias", nargs="+", default=[], help="frames to use as bias, whatever IMAGETYP")
    c.add_argument("--dark", nargs="+", default=[], help="frames to use as darks")
    c.add_argument("--flat", nargs="+", default=[], help="frames to use as flats")
    c.add_argument(
        "--save-calibrated",
        action="store_true",
        help="calibrate the light frames among FRAMES and write them to --out",
    )
    c.add_argument("--out", default="calibrated", help="folder for calibrated frames")
    c.add_argument("--gain", type=float, help="e-/ADU (for L.A.Cosmic; overrides the header)")
    c.add_argument("--read-noise", type=float, help="e- (for L.A.Cosmic)")
    _calibration_flags(c, library=False)

    s = sub.add_parser("simulate", help="simulate an observing night with known truth")
    s.add_argument("--out", required=True)
    s.add_argument("--frames", type=int, default=150)
    s.add_argument(
        "--size",
        type=lambda t: tuple(int(v) for v in _floats(t, 2, "--size")),
        default=(1024, 1024),
        help="W,H (px)",
    )
    s.add_argument("--stars", type=int, default=300)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--meridian-flip", action="store_true")
    s.add_argument("--no-wcs", action="store_true")
    s.add_argument("--depth", type=float, default=0.01, help="transit depth (fraction)")

    pe = sub.add_parser("period", help="period of one object over one or more runs (nights)")
    pe.add_argument("runs", nargs="+", help="output folders of tsphot runs, one per night")
    pe.add_argument("--object", required=True, help="object name (lightcurve_<NAME>.ecsv)")
    pe.add_argument("--min", help="shortest period: hours, or with a unit: 90m, 2.5h, 1.2d")
    pe.add_argument("--max", help="longest period, like --min")
    pe.add_argument("--method", choices=["ls", "bls", "fourier"], default="ls")
    pe.add_argument("--order", type=int, default=4, help="Fourier series order (fourier)")
    pe.add_argument("--out", help="output folder (default period-<NAME>)")
    pe.add_argument(
        "--geometry",
        action="append",
        type=lambda t: _geometry(t),
        help="asteroid R,DELTA[,PHASE] (au, au, deg) for each run, in order; repeatable",
    )
    pe.add_argument("--ephemeris", help="table of JD, r, delta, phase to interpolate instead")
    pe.add_argument("--g-slope", type=float, default=0.15, help="H,G phase slope G (0.15)")
    pe.add_argument(
        "--shared-zero-point",
        action="store_true",
        help="one zero point for all nights (calibrated magnitudes on a common scale)",
    )
    pe.add_argument("--alcdef", action="store_true", help="also write an ALCDEF file")
    pe.add_argument(
        "--alcdef-meta",
        action="append",
        default=[],
        help="ALCDEF KEYWORD=VALUE, e.g. OBJECTNUMBER=2713 CONTACTINFO=[me@x.org]; repeatable",
    )

    d = sub.add_parser("demo", help="simulate a night, reduce it, compare with the truth")
    d.add_argument("--out", default="demo-output")
    d.add_argument("--frames", type=int, default=150)
    d.add_argument(
        "--size",
        type=lambda t: tuple(int(v) for v in _floats(t, 2, "--size")),
        default=(1024, 1024),
    )
    d.add_argument("--seed", type=int, default=1)

    from tsphot.api.server import add_parsers

    add_parsers(sub)
    return p


def _calibration_flags(p: argparse.ArgumentParser, library: bool = True) -> None:
    if library:
        p.add_argument(
            "--library",
            help="calibration library folder: masters chosen per frame (tsphot calibrate)",
        )
    p.add_argument(
        "--linearity-limit", type=float, help="raw ADU where the camera stops being linear"
    )
    p.add_argument(
        "--lacosmic", action="store_true", help="clean cosmic rays with L.A.Cosmic (astroscrappy)"
    )
    p.add_argument("--memory-mb", type=float, help="memory budget for combining masters (512)")
    p.add_argument(
        "--profile",
        choices=["generic", "maxim", "sbig", "nina", "theskyx", "microobservatory"],
        help="instrument profile (default: detected from each header)",
    )


def _calibration_settings(a: argparse.Namespace) -> dict:
    return {
        "library": a.library,
        "linearity_limit": a.linearity_limit,
        "lacosmic": a.lacosmic or None,
        "memory_mb": a.memory_mb,
        "profile": a.profile,
        "save_calibrated": a.save_calibrated or None,
    }


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from tsphot import pipeline
    from tsphot.settings import make_settings

    settings = make_settings(
        None,
        frames=a.frames,
        out=a.out,
        bias=a.bias,
        dark=a.dark,
        flat=a.flat,
        gain=a.gain,
        read_noise=a.read_noise,
        **_calibration_settings(a),
    )
    summary = pipeline.calibrate_command(settings)
    print(f"library {summary['library']}: {len(summary['masters'])} masters")
    for name in summary["masters"]:
        print(f"  {name}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    missing: set[str] = set()
    for row in summary["frames"]:
        if row["status"] == "ok":
            missing |= {f"{k}: {v['why']}" for k, v in row["choice"].items() if not v.get("file")}
        if row["status"] != "ok":
            print(f"  {row['file']}: {row['status']}: {row['why']}")
            continue
        ch = row["choice"]
        used = ", ".join(f"{k} {v['file']}" for k, v in ch.items() if v.get("file"))
        scale = ch["dark"].get("scale")
        extra = f" (dark x{scale:.4g})" if scale not in (None, 1.0) else ""
        print(f"  {row['file']}: {used or 'no masters'}{extra}")
    for m in sorted(missing):
        print(f"  without {m}")
    if summary["unclassified"]:
        print(f"  no IMAGETYP, treated as light: {', '.join(summary['unclassified'][:5])}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from tsphot import pipeline
    from tsphot.settings import make_settings, parse_object

    flags = {
        "frames": a.frames,
        "out": a.out,
        "bias": a.bias,
        "dark": a.dark,
        "flat": a.flat,
        "targets": [parse_object(t, f"T{i + 1}") for i, t in enumerate(a.target)],
        "comps": [parse_object(t, f"C{i + 1}") for i, t in enumerate(a.comp)],
        "checks": [parse_object(t, f"K{i + 1}") for i, t in enumerate(a.check)],
        "aperture": a.aperture,
        "radii": a.radii,
        "annulus": a.annulus,
        "ellipticity": a.ellipticity,
        "position_angle": a.position_angle,
        "site": a.site,
        "aperture_diameter_m": a.aperture_diameter,
        "gain": a.gain,
        "read_noise": a.read_noise,
        "saturation": a.saturation,
        "min_transparency": a.min_transparency,
        "aperture_fwhm": a.aperture_fwhm,
        "radii_fwhm": a.radii_fwhm,
        "annulus_fwhm": a.annulus_fwhm,
        "aperture_scaling": a.aperture_scaling,
        "centroid": a.centroid,
        "sky_method": a.sky_method,
        "mask_stars": False if a.no_mask_stars else None,
        "thin_cloud": a.thin_cloud,
        "max_sky_ratio": a.max_sky_ratio,
        "outlier_sigma": a.outlier_sigma,
        "all_stars": a.all_stars or None,
        "field_snr": a.field_snr,
        "field_false_alarm": a.field_fap,
        "sky_apertures": a.sky_apertures,
        "workers": a.workers,
        "scheduler": a.scheduler,
        "executor": "dask" if a.scheduler and not a.executor else a.executor,
        "resume": a.resume or None,
        "quiet": a.quiet or None,
        **_calibration_settings(a),
        "exports": a.export,
        "observer_code": a.observer_code,
        "aavso_filter": a.aavso_filter,
        "aij_apertures": a.aij_apertures,
        "aij_radec": a.aij_radec,
        "masters": a.masters,
    }
    settings = make_settings(a.config, **flags)
    summary = pipeline.run(settings)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("out", "frames", "frames_ok", "frames_resumed", "comps_used", "radius")
                if k in summary
            }
        )
    )
    for path, why in summary["frames_bad"].items():
        print(f"  skipped {Path(path).name}: {why}")
    for name, obj in summary["objects"].items():
        line = (
            f"  {name} ({obj['role']}): {obj['frames_measured']} points, rms {obj['rms_rel_flux']}"
        )
        print(line)
    for fmt, why in summary.get("export_errors", {}).items():
        print(f"  export {fmt} not written: {why}")
    print(f"  report: {summary['report']}")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from tsphot.products import export

    products = export.load_products(a.run_dir)
    out = Path(a.out) if a.out else Path(a.run_dir) / "exports"
    files = export.write_exports(
        a.formats,
        products,
        out,
        observer_code=a.observer_code,
        aavso_filter=a.aavso_filter,
        aavso_chart=a.chart,
        exoplanet_name=a.exoplanet_name,
    )
    for f in files:
        print(f)
    return 0


def _cmd_bundle(a: argparse.Namespace) -> int:
    from tsphot.products import bundle

    res = bundle.make_bundle(a.run_dir, a.out, with_data=a.with_data)
    print(
        f"wrote {res.path} ({res.size_bytes / 1e6:.1f} MB, {res.n_entries} entries, "
        f"{'with' if res.with_data else 'without'} the exposures; sha256 {res.sha256})"
    )
    return 0


def _cmd_replay(a: argparse.Namespace) -> int:
    from tsphot.products import bundle

    res = bundle.replay(a.bundle, data_dir=a.data_dir, out=a.out, executor=a.executor)
    print(res.summary())
    return 0 if res.identical else 1


def _cmd_simulate(a: argparse.Namespace) -> int:
    from tsphot import synthetic

    cfg = synthetic.SimConfig(
        n_frames=a.frames,
        size=a.size,
        n_stars=a.stars,
        seed=a.seed,
        meridian_flip=a.meridian_flip,
        write_wcs=not a.no_wcs,
        transit_depth=a.depth,
    )
    synthetic.simulate_night(a.out, cfg)
    print(f"simulated {a.frames} frames into {a.out} (settings: {Path(a.out) / 'tsphot.toml'})")
    return 0


def _geometry(text: str) -> tuple[float, float, float | None]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--geometry needs R,DELTA[,PHASE], got {text!r}")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--geometry: {text!r} is not numbers") from None
    return vals[0], vals[1], vals[2] if len(vals) == 3 else None


def _cmd_period(a: argparse.Namespace) -> int:
    from tsphot import pipeline
    from tsphot.period import parse_period

    meta = {}
    for item in a.alcdef_meta:
        if "=" not in item:
            print(f"tsphot: error: --alcdef-meta {item!r} is not KEYWORD=VALUE", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        meta[k.strip().upper()] = v.strip()
    meta.setdefault("OBJECTNAME", a.object)
    summary = pipeline.period_search(
        a.runs,
        a.object,
        a.out or f"period-{a.object}",
        method=a.method,
        min_period=parse_period(a.min) if a.min else None,
        max_period=parse_period(a.max) if a.max else None,
        order=a.order,
        geometry=a.geometry,
        ephemeris=a.ephemeris,
        g_slope=a.g_slope,
        shared_zero_point=a.shared_zero_point,
        alcdef_meta=meta if a.alcdef else None,
    )
    line = (
        f"{summary['object']}: P = {summary['period_h']:.6g} ± {summary['period_err_h']:.2g} h "
        f"({summary['method']})"
    )
    if summary["fap"] is not None:
        line += f", false-alarm probability {summary['fap']:.2g}"
    print(line)
    for note in summary["notes"]:
        print(f"  note: {note}")
    print(
        f"  products in {summary['out']}"
        + (f"; ALCDEF {summary['alcdef']}" if "alcdef" in summary else "")
    )
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from tsphot import demo

    demo.run_demo(a.out, n_frames=a.frames, size=a.size, seed=a.seed)
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from tsphot.api.server import cmd_serve

    return cmd_serve(a)


def _cmd_users(a: argparse.Namespace) -> int:
    from tsphot.api.server import cmd_users

    return cmd_users(a)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tsphot` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tsphot: %(message)s")
    try:
        commands = {
            "run": _cmd_run,
            "calibrate": _cmd_calibrate,
            "export": _cmd_export,
            "bundle": _cmd_bundle,
            "replay": _cmd_replay,
            "simulate": _cmd_simulate,
            "demo": _cmd_demo,
            "period": _cmd_period,
            "serve": _cmd_serve,
            "users": _cmd_users,
        }
        return commands[args.command](args)
    except TsphotError as exc:
        if args.debug:
            raise
        print(f"tsphot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tsphot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
