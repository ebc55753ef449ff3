"""Achieved against predicted noise for each simulated noise regime, in one run.

Usage: .venv/bin/python benchmarks/precision.py [--frames 1200] [--seeds 31,41]

For every regime of ``tsphot.demo.NOISE_REGIMES`` (photon-limited faint target,
scintillation-limited bright target, cloud-hit night) a night is simulated, reduced, and the
target's scatter (true transit divided out) is set against the simulator's predicted noise;
the reduced chi-square of the reported errors and the ensemble weights against the inverse
true variances are printed too.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from tsphot import demo


def main() -> None:
    """Print one line per regime and seed."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--seeds", default="", help="comma-separated; default: the test seeds")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s] or [None]
    print("regime         seed  frames  achieved/predicted  chi2_red  max|w/w_true-1|")
    for regime in sorted(demo.NOISE_REGIMES):
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                c = demo.regime_run(regime, Path(tmp), a.frames, seed)
            w = np.array(list(c["weight_ratio"].values()))
            print(
                f"{regime:14s} {seed!s:>5s} {c['n_points']:7d} "
                f"{c['achieved_rms'] / c['predicted_rms']:19.3f} {c['chi2_red']:9.3f} "
                f"{np.max(np.abs(w - 1)):16.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
