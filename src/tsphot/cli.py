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
        "'NAME=X,Y@HH:MM:SS.s,+DD:MM:SS'; repeatable",
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
    r.add_argument("--executor", choices=["serial", "processes"])
    r.add_argument("--workers", type=int)
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

    d = sub.add_parser("demo", help="simulate a night, reduce it, compare with the truth")
    d.add_argument("--out", default="demo-output")
    d.add_argument("--frames", type=int, default=150)
    d.add_argument(
        "--size",
        type=lambda t: tuple(int(v) for v in _floats(t, 2, "--size")),
        default=(1024, 1024),
    )
    d.add_argument("--seed", type=int, default=1)
    return p


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
        "outlier_sigma": a.outlier_sigma,
        "executor": a.executor,
        "workers": a.workers,
        "quiet": a.quiet or None,
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
        json.dumps({k: summary[k] for k in ("out", "frames", "frames_ok", "comps_used", "radius")})
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


def _cmd_demo(a: argparse.Namespace) -> int:
    from tsphot import demo

    demo.run_demo(a.out, n_frames=a.frames, size=a.size, seed=a.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tsphot` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tsphot: %(message)s")
    try:
        commands = {
            "run": _cmd_run,
            "export": _cmd_export,
            "bundle": _cmd_bundle,
            "replay": _cmd_replay,
            "simulate": _cmd_simulate,
            "demo": _cmd_demo,
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
