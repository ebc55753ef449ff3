"""Throughput of `tsphot run` against the floor of reading the FITS files and against a plain
photutils script, and its scaling with frames, stars, frame size and cores.

Usage: .venv/bin/python benchmarks/throughput.py [--sections floor,cores,frames,stars,size]
       [--work DIR] [--repeat N] > benchmarks/out/throughput.log

Every measurement runs in a fresh child process (its own peak RSS; start-up not shared). The
per-frame cost of each method is (time for 180 frames - time for 60 frames) / 120, so start-up,
planning and the reduce step cancel. The machine is shared: compare the ratios printed by one run
of this script, not absolute times across runs. Prints one JSON line per measurement and a
Markdown summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD_TSPHOT = """
import json, resource, sys, time
from tsphot import pipeline
from tsphot.settings import make_settings
a = json.loads(sys.stdin.read())
stage = {}
measure_all = pipeline.measure_all
def timed(*args, **kw):
    t, c = time.perf_counter(), time.process_time()
    out = measure_all(*args, **kw)
    stage["measure_s"] = time.perf_counter() - t
    stage["measure_cpu_s"] = time.process_time() - c
    return out
pipeline.measure_all = timed
s = make_settings(a["toml"], out=a["out"], quiet=True, executor=a["executor"],
                  workers=a.get("workers"))
if a.get("frames"):
    s.frames = a["frames"]
t, c = time.perf_counter(), time.process_time()
summary = pipeline.run(s)
cpu = time.process_time() - c
# VmHWM is this address space's own peak (ru_maxrss would carry the benchmark parent's)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
own = int(hwm.split()[1]) / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"total_s": time.perf_counter() - t, "measure_s": stage["measure_s"],
                  "cpu_s": cpu, "measure_cpu_s": stage["measure_cpu_s"],
                  "frames_ok": summary["frames_ok"], "peak_rss_mb": own,
                  "worker_peak_rss_mb": kids}))
"""

_CHILD_READ = """
import json, sys, time
from tsphot import ingest
a = json.loads(sys.stdin.read())
t, c = time.perf_counter(), time.process_time()
for p in a["frames"]:
    ingest.read_pixels(p)  # float32 ADU through astropy.io.fits, as a script reads them
print(json.dumps({"total_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}))
"""

# A plain photutils script: calibrate each frame with the same masters, recentre every star
# (centre of mass in an 11 px box, tracked from the previous frame), sum exact circular
# apertures, subtract the annulus median sky.
_CHILD_PHOTUTILS = """
import json, sys, time
import numpy as np
from astropy.io import fits
from astropy.table import Table
from photutils.aperture import (ApertureStats, CircularAnnulus, CircularAperture,
                                aperture_photometry)
from photutils.centroids import centroid_com, centroid_sources
a = json.loads(sys.stdin.read())
def stack(paths):
    return np.median([fits.getdata(p).astype(np.float32) for p in paths], axis=0)
bias = stack(a["bias"])
dark = stack(a["dark"]) - bias
dark_t = fits.getheader(a["dark"][0])["EXPTIME"]
flat = stack(a["flat"]) - bias
flat /= np.median(flat)
res = Table.read(a["results"])
first = res[res["frame"] == 0]
x, y = np.array(first["x"], float), np.array(first["y"], float)
r, (r_in, r_out) = a["radius"], a["annulus"]
t, c = time.perf_counter(), time.process_time()
for p in a["frames"]:
    with fits.open(p, memmap=False) as h:
        raw = h[0].data.astype(np.float32)
        t_exp = h[0].header["EXPTIME"]
    data = (raw - bias - dark * (t_exp / dark_t)) / flat
    x, y = centroid_sources(data, x, y, box_size=11, centroid_func=centroid_com)
    pos = np.column_stack([x, y])
    phot = aperture_photometry(data, CircularAperture(pos, r), method="exact")
    sky = ApertureStats(data, CircularAnnulus(pos, r_in, r_out)).median
    flux = phot["aperture_sum"] - sky * np.pi * r * r
print(json.dumps({"total_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                  "n_stars": len(x)}))
"""


KINDS = ("bias", "dark", "flat")
FLOOR_NIGHT = {"n_frames": 180, "size": (1024, 1024), "n_stars": 300, "seed": 3}


# One core means one thread too: numpy's BLAS (the fits' least squares) would otherwise use
# both cores for a moment and CPU time would count them twice.
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMBA_NUM_THREADS")}  # fmt: skip


def child(code: str, args: dict) -> dict:
    """Run one measurement in a fresh Python process; its JSON result."""
    res = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(args), capture_output=True, text=True,
        env={**os.environ, **ONE_THREAD},
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def night(work: Path, name: str, **cfg) -> Path:
    """Simulate a night once (kept in work/ for the next run of this script)."""
    from tsphot import synthetic

    folder = work / name
    if not (folder / "truth.json").exists():
        t = time.perf_counter()
        synthetic.simulate_night(folder, synthetic.SimConfig(**cfg), workers=2)
        log({"simulated": name, "s": round(time.perf_counter() - t, 1)})
    return folder


def science(folder: Path) -> list[str]:
    """The night's science frames in time order."""
    return sorted(str(p) for p in (folder / "raw").glob("sci_*.fits"))


def log(row: dict) -> None:
    """One JSON line on stdout, flushed (the run is long)."""
    print(json.dumps(row), flush=True)


def tsphot(folder: Path, frames: list[str], executor: str = "serial", workers=None) -> dict:
    """tsphot run on these frames in a child process."""
    out = folder.parent / f"out_{folder.name}_{len(frames)}_{executor}{workers or ''}"
    args = {
        "toml": str(folder / "tsphot.toml"),
        "out": str(out),
        "executor": executor,
        "workers": workers,
        "frames": frames,
    }
    r = child(_CHILD_TSPHOT, args)
    r["out"] = str(out)
    return r


def per_frame(short: dict, long: dict, n_short: int, n_long: int, key: str) -> float:
    """Per-frame cost (ms) from the difference of two frame counts."""
    return 1000 * (long[key] - short[key]) / (n_long - n_short)


def section_floor(work: Path, summary: list[str], repeat: int = 2) -> dict:
    """1k x 1k, 300 stars, one core: tsphot vs reading the files vs a photutils script."""
    folder = night(work, "floor_1k", **FLOOR_NIGHT)
    frames = science(folder)
    short, long = frames[:60], frames[:180]
    # A burst of other work on a shared machine can double any one run: each method runs
    # `repeat` times (the floor, which takes a second or two, three times as often), and the
    # fastest run of each counts.
    load = os.getloadavg()
    reads = [[child(_CHILD_READ, {"frames": f})] for f in (short, long)]
    ts_runs = [[tsphot(folder, f, "serial")] for f in (short, long)]
    for _ in range(3 * repeat - 1):
        for got, f in zip(reads, (short, long), strict=True):
            got.append(child(_CHILD_READ, {"frames": f}))
    for _ in range(repeat - 1):
        for got, f in zip(ts_runs, (short, long), strict=True):
            got.append(tsphot(folder, f, "serial"))
    read = [min(got, key=lambda r: r["total_s"]) for got in reads]
    ts = [min(got, key=lambda r: r["total_s"]) for got in ts_runs]
    # CPU time of each child process, much less moved by other work than wall time is
    read_cpu = [min(got, key=lambda r: r["cpu_s"]) for got in reads]
    ts_cpu = [min(got, key=lambda r: r["cpu_s"]) for got in ts_runs]
    toml = json.loads((Path(ts[1]["out"]) / "run.json").read_text())
    cal = {k: sorted(str(p) for p in (folder / "raw").glob(f"{k}_*.fits")) for k in KINDS}
    pu_args = {
        **cal,
        "results": str(Path(ts[1]["out"]) / "results.ecsv"),
        "radius": toml["apertures"]["chosen_radius_px"],
        "annulus": toml["apertures"]["annulus_px"],
    }
    pu_runs = [
        [child(_CHILD_PHOTUTILS, {**pu_args, "frames": f}) for _ in range(repeat)]
        for f in (short, long)
    ]
    pu = [min(got, key=lambda r: r["total_s"]) for got in pu_runs]
    pu_cpu = [min(got, key=lambda r: r["cpu_s"]) for got in pu_runs]
    row = {
        "section": "floor",
        "read_ms": per_frame(*read, 60, 180, "total_s"),
        "tsphot_total_ms": per_frame(*ts, 60, 180, "total_s"),
        "tsphot_measure_ms": per_frame(*ts, 60, 180, "measure_s"),
        "photutils_ms": per_frame(*pu, 60, 180, "total_s"),
        "read_cpu_ms": per_frame(*read_cpu, 60, 180, "cpu_s"),
        "tsphot_cpu_ms": per_frame(*ts_cpu, 60, 180, "cpu_s"),
        "tsphot_measure_cpu_ms": per_frame(*ts_cpu, 60, 180, "measure_cpu_s"),
        "photutils_cpu_ms": per_frame(*pu_cpu, 60, 180, "cpu_s"),
        "stars_measured": pu[0]["n_stars"],
        "tsphot_180_s": ts[1]["total_s"],
        "repeat": repeat,
        "load_avg_1_5_15_before": load,
        "load_avg_1_5_15_after": os.getloadavg(),
    }
    log(row)
    summary += [
        "### tsphot against the read floor and photutils (1024x1024, 300 stars, one core)",
        "",
        "| per frame (ms) | read FITS (floor) | tsphot run | photutils script |",
        "|---|---|---|---|",
        f"| (t180 - t60) / 120 | {row['read_ms']:.1f} | {row['tsphot_total_ms']:.1f} | "
        f"{row['photutils_ms']:.1f} |",
        f"| ratio to the floor | 1 | {row['tsphot_total_ms'] / row['read_ms']:.2f} | "
        f"{row['photutils_ms'] / row['read_ms']:.2f} |",
        f"| CPU time, (t180 - t60) / 120 | {row['read_cpu_ms']:.1f} | "
        f"{row['tsphot_cpu_ms']:.1f} | {row['photutils_cpu_ms']:.1f} |",
        f"| CPU ratio to the floor | 1 | {row['tsphot_cpu_ms'] / row['read_cpu_ms']:.2f} | "
        f"{row['photutils_cpu_ms'] / row['read_cpu_ms']:.2f} |",
        "",
        f"tsphot's measuring stage alone: {row['tsphot_measure_ms']:.1f} ms per frame "
        f"({row['tsphot_measure_ms'] / row['read_ms']:.2f} x the floor). Fastest of {repeat} "
        f"runs each; load average {load[0]:.1f} before, {row['load_avg_1_5_15_after'][0]:.1f} "
        "after.",
        "",
        f"tsphot / photutils = {row['tsphot_total_ms'] / row['photutils_ms']:.2f} "
        f"(CPU time: {row['tsphot_cpu_ms'] / row['photutils_cpu_ms']:.2f}; measuring stage "
        f"{row['tsphot_measure_cpu_ms']:.1f} ms CPU per frame) "
        f"({row['stars_measured']} stars measured in each frame; tsphot also calibrates, "
        "detects and registers each frame; the photutils script calibrates, recentres and "
        "measures).",
        "",
    ]
    return {"folder": folder, "frames": frames, "serial": ts[1]}


def section_cores(work: Path, summary: list[str], floor: dict | None) -> None:
    """The same 180 frames measured on 1 core and on 2 worker processes."""
    folder = floor["folder"] if floor else night(work, "floor_1k", **FLOOR_NIGHT)
    frames = science(folder)[:180]
    one = floor["serial"] if floor else tsphot(folder, frames, "serial")
    two = tsphot(folder, frames, "processes", 2)
    row = {
        "section": "cores",
        "measure_1core_s": one["measure_s"],
        "measure_2workers_s": two["measure_s"],
        "speedup": one["measure_s"] / two["measure_s"],
    }
    log(row)
    summary += [
        "### Cores (the measuring stage, 180 frames of 1024x1024)",
        "",
        "| workers | measuring (s) | speed-up |",
        "|---|---|---|",
        f"| 1 (serial) | {one['measure_s']:.1f} | 1 |",
        f"| 2 (processes) | {two['measure_s']:.1f} | {row['speedup']:.2f} |",
        "",
    ]


def section_frames(work: Path, summary: list[str]) -> None:
    """100 -> 2000 frames of 512x512: per-frame cost and peak memory."""
    folder = night(
        work,
        "frames_512",
        n_frames=2000,
        size=(512, 512),
        n_stars=150,
        seed=4,
        exptime=5.0,
        cadence=6.0,  # 2000 frames in 3.3 hours: the field stays up
    )
    frames = science(folder)
    rows = []
    for n in (100, 500, 2000):
        r = tsphot(folder, frames[:n], "processes", 2)
        rows.append((n, r))
        log({"section": "frames", "n": n, **{k: r[k] for k in r if k != "out"}})
    summary += [
        "### Frames (512x512, 150 stars, 5 s exposures, 2 worker processes)",
        "",
        "| frames | run (s) | measuring (s) | measuring per frame (ms) | peak RSS main (MB) | "
        "peak RSS worker (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in rows:
        summary.append(
            f"| {n} | {r['total_s']:.1f} | {r['measure_s']:.1f} | "
            f"{1000 * r['measure_s'] / n:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['worker_peak_rss_mb']:.0f} |"
        )
    summary.append("")


def section_stars(work: Path, summary: list[str]) -> None:
    """12 -> 3000 stars in the field (512x512, 60 frames, one core); 12 is the simulator's least
    (target, 8 comparison candidates, check, saturated star, one more)."""
    rows = []
    for n_stars in (12, 300, 3000):
        folder = night(work, f"stars_{n_stars}", n_frames=60, size=(512, 512), n_stars=n_stars)
        r = tsphot(folder, science(folder), "serial")
        rows.append((n_stars, r))
        log({"section": "stars", "n_stars": n_stars, **{k: r[k] for k in r if k != "out"}})
    summary += [
        "### Stars in the field (512x512, 60 frames, one core)",
        "",
        "| stars | measuring per frame (ms) | run (s) | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for n, r in rows:
        summary.append(
            f"| {n} | {1000 * r['measure_s'] / 60:.1f} | {r['total_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    summary.append("")


def section_size(work: Path, summary: list[str]) -> None:
    """512^2 -> 4096^2 frames (300 stars, 20 frames, one core)."""
    rows = []
    for side in (512, 1024, 2048, 4096):
        folder = night(work, f"size_{side}", n_frames=20, size=(side, side), n_stars=300)
        r = tsphot(folder, science(folder), "serial")
        read = child(_CHILD_READ, {"frames": science(folder)})
        rows.append((side, r, read))
        log({"section": "size", "side": side, "read_s": read["total_s"], **r})
    summary += [
        "### Frame size (300 stars, 20 frames, one core)",
        "",
        "| size | measuring per frame (ms) | read per frame (ms) | ratio | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for side, r, read in rows:
        m, rd = 1000 * r["measure_s"] / 20, 1000 * read["total_s"] / 20
        summary.append(
            f"| {side}x{side} | {m:.0f} | {rd:.0f} | {m / rd:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    summary.append("")


def main() -> None:
    """Run the chosen sections; print JSON lines and a Markdown summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="floor,cores,frames,stars,size")
    ap.add_argument("--work", default=str(Path(__file__).parent / "out" / "throughput"))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each method in --sections floor")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    chosen = a.sections.split(",")
    summary: list[str] = []
    floor = None
    for name in chosen:
        try:
            if name == "floor":
                floor = section_floor(work, summary, a.repeat)
            elif name == "cores":
                section_cores(work, summary, floor)
            else:
                {"frames": section_frames, "stars": section_stars, "size": section_size}[name](
                    work, summary
                )
        except Exception as exc:  # one failed section must not cost the others
            log({"section": name, "failed": f"{type(exc).__name__}: {exc}"[-2000:]})
            summary += [f"### {name}: failed ({type(exc).__name__})", ""]
    print("\n".join(["", *summary]), flush=True)


if __name__ == "__main__":
    main()
