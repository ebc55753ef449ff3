"""Coverage of the transit fit's error bars over 20 seeded nights (against the truth).

"Within 2 sigma" is inside the fit's 2-sigma profile-likelihood interval (Δχ² = 4 with the
other parameters refitted; run.json's ``fit.intervals``), which stays honest where the
likelihood is not a parabola: these nights are hard (a 0.8 % transit with 1.2 % per-point
noise, a third of the night out of transit, airmass and time trends free): in these 20
the transit is detected at only 2.7-6.4 sigma. Measured: truth inside the 2-sigma interval
for t0 in 17 and for the depth in 20 of 20 (the covariance error of t0 covered 13).
If the intervals are right, truth lies inside 95 % of the time: 19 of 20 nights expected. At
least 16 of 20 is required; for a true coverage of 95 % that fails with probability 1.6 %,
while intervals too small by a third (coverage 82 %) fail it more often than not.
"""

import numpy as np
import pytest

from tsphot import demo, pipeline, synthetic

# Long (several minutes): run with `pytest -m heavy`; not yet verified in the default suite.
pytestmark = pytest.mark.heavy

SEEDS = range(101, 121)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    rows = []
    for seed in SEEDS:
        base = tmp_path_factory.mktemp(f"seed{seed}")
        cfg = synthetic.SimConfig(
            n_frames=160,
            size=(256, 256),
            n_stars=45,
            seed=seed,
            target_mag=12.5,
            transit_depth=0.008,
        )
        truth = synthetic.simulate_night(base / "night", cfg, workers=2)
        pipeline.run(demo.settings_for(base / "night", base / "out", truth, quiet=True))
        rows.append(demo.compare_with_truth(truth, base / "out"))
    return rows


def _within(rows, name):
    inside = [c[f"{name}_2sigma"][0] <= c[f"true_{name}"] <= c[f"{name}_2sigma"][1] for c in rows]
    z = [(c[name] - c[f"true_{name}"]) / c[f"{name}_err"] for c in rows]
    return int(np.sum(inside)), np.round(z, 2)


@pytest.mark.slow
def test_depth_within_2_sigma_in_most_nights(fits):
    n, z = _within(fits, "depth")
    assert n >= 16, (n, z)


@pytest.mark.slow
def test_mid_time_within_2_sigma_in_most_nights(fits):
    n, z = _within(fits, "t0")
    assert n >= 16, (n, z)
