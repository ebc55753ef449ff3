"""Cost of field mode: the HAT-P-32 night reduced with and without --all-stars.

Run: .venv/bin/python benchmarks/field_speed.py [--repeats 2] [--out /tmp/field-bench]

Runs alternate (without, with, without, with, ...) so that load from other work on the
machine falls on both. Each run is serial (one process), so its CPU time (user + system) is
its own cost whatever else the machine does; the ratio of the median CPU times is the figure
of merit (goal: at most 1.5). Wall-clock times are printed too.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from tsphot import datasets, pipeline

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hatp32-microobservatory"


def settings(out: Path, all_stars: bool):
    """The settings of the real-data test (tests/test_realdata_hatp32.py), without the fit."""
    return datasets.hatp32_settings(
        out,
        data_dir=DATA,
        quiet=True,
        all_stars=all_stars or None,
        executor="serial",
    )


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    """Time both modes, print the table and the ratio."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data not present at {DATA}")
    base = Path(a.out or tempfile.mkdtemp(prefix="field-bench-"))
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    info = {}
    for rep in range(a.repeats):
        for mode in (False, True):
            out = base / f"{'all' if mode else 'plain'}-{rep}"
            t0, c0 = time.perf_counter(), _cpu()
            summary = pipeline.run(settings(out, mode))
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(_cpu() - c0)
            if mode:
                info = {
                    "stars": summary["field"]["stars"],
                    "candidates": len(summary["field"]["candidates"]),
                }
            print(
                f"run {rep} all_stars={mode}: wall {times[mode][-1]:.1f} s, "
                f"CPU {cpu[mode][-1]:.1f} s",
                flush=True,
            )
    record = {
        "wall_plain_s": times[False],
        "wall_all_stars_s": times[True],
        "cpu_plain_s": cpu[False],
        "cpu_all_stars_s": cpu[True],
        **info,
    }
    print(json.dumps(record, indent=1))
    plain, full = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(
        f"median CPU without {plain:.1f} s, with --all-stars {full:.1f} s: ratio {full / plain:.2f}"
    )
    w0, w1 = statistics.median(times[False]), statistics.median(times[True])
    print(f"median wall without {w0:.1f} s, with {w1:.1f} s: ratio {w1 / w0:.2f}")


if __name__ == "__main__":
    main()
