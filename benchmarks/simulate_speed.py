"""How long the simulator takes for a default night (150 frames of 1024 x 1024, 300 stars).

Run: .venv/bin/python benchmarks/simulate_speed.py [--frames N] [--size NX NY] [--workers W]
Writes into benchmarks/out/sim (git-ignored) and prints seconds in total and per frame.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from tsphot.synthetic import SimConfig, simulate_night


def main() -> None:
    """Time simulate_night for the default night, serially and with worker processes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--size", type=int, nargs=2, default=(1024, 1024))
    p.add_argument("--stars", type=int, default=300)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "sim"))
    a = p.parse_args()
    cfg = SimConfig(n_frames=a.frames, size=tuple(a.size), n_stars=a.stars)
    out = Path(a.out)
    for w in a.workers:
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        simulate_night(out, cfg, workers=w)
        dt = time.perf_counter() - t
        print(
            f"{a.frames} frames {a.size[0]}x{a.size[1]}, {a.stars} stars, workers={w}: "
            f"{dt:.1f} s ({1e3 * dt / a.frames:.0f} ms per frame incl. calibration and truth)"
        )


if __name__ == "__main__":
    main()
