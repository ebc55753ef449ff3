"""Wall time and peak memory of `tsphot run` against the number of frames, in one run.

Usage: .venv/bin/python benchmarks/demo_speed.py [--frames 60,150,300] [--size 1024]

Each reduction runs in its own child process so its peak RSS (VmHWM) is its own. The
simulation is timed apart from the reduction. Per-frame cost is taken from the difference of two
frame counts, so start-up cancels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import resource, time
from tsphot.settings import make_settings
from tsphot import pipeline
s = make_settings({toml!r}, out={out!r}, quiet=True, executor={executor!r})
t = time.perf_counter()
pipeline.run(s)
dt = time.perf_counter() - t
# VmHWM is this address space's own peak; ru_maxrss of a fresh child still carries the peak
# of the process that started it (here the simulating parent)
own = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(dt, own / 1024, workers / 1024)
"""


def reduce_in_child(night: Path, executor: str) -> tuple[float, float, float]:
    """Reduce a simulated night in a fresh process: seconds, its peak RSS and its workers' (MB)."""
    code = _CHILD.format(toml=str(night / "tsphot.toml"), out=str(night / "out"), executor=executor)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, own, workers = (float(v) for v in res.stdout.split()[-3:])
    return dt, own, workers


def main() -> None:
    """Simulate nights of several lengths, reduce each, print a table of time and memory."""
    from tsphot import synthetic

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", default="60,150,300")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--executor", default="processes")
    a = ap.parse_args()
    counts = [int(v) for v in a.frames.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            night = Path(tmp) / f"night{n}"
            t = time.perf_counter()
            synthetic.simulate_night(night, synthetic.SimConfig(n_frames=n, size=(a.size, a.size)))
            sim = time.perf_counter() - t
            dt, own, workers = reduce_in_child(night, a.executor)
            rows.append(
                {
                    "frames": n,
                    "simulate_s": round(sim, 1),
                    "run_s": round(dt, 1),
                    "peak_rss_mb": round(own, 1),
                    "worker_peak_rss_mb": round(workers, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        a0, a1 = rows[0], rows[-1]
        per = (a1["run_s"] - a0["run_s"]) / (a1["frames"] - a0["frames"])
        print(
            f"per-frame reduction cost: {1000 * per:.0f} ms/frame ({a.executor}); "
            f"peak RSS {a0['peak_rss_mb']} MB at {a0['frames']} frames vs "
            f"{a1['peak_rss_mb']} MB at {a1['frames']} frames"
        )


if __name__ == "__main__":
    main()
