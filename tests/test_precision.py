"""The noise limit in three regimes, against the simulator's truth (seeded).

Each night has 1,200 frames: the rms of N points has a relative sampling error of 1/sqrt(2N)
= 2.0 %, so "achieved within 5 % of predicted" is a 2.5-sigma test, and the reduced chi-square
of the reported errors (0.8-1.25) a test far wider than its own 4 % sampling error.
"""

import numpy as np
import pytest

from tsphot import demo

# Long (several minutes): run with `pytest -m heavy`; not yet verified in the default suite.
pytestmark = pytest.mark.heavy

N_FRAMES = 1200


@pytest.fixture(scope="module", params=sorted(demo.NOISE_REGIMES))
def regime(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    return request.param, None, demo.regime_run(request.param, base, N_FRAMES)


def test_achieved_scatter_within_5_percent_of_prediction(regime):
    name, _, c = regime
    assert c["achieved_rms"] / c["predicted_rms"] == pytest.approx(1.0, abs=0.05), (name, c)


def test_reported_errors_match_the_scatter(regime):
    name, _, c = regime
    assert 0.8 <= c["chi2_red"] <= 1.25, (name, c)


def test_weights_follow_inverse_true_variances(regime):
    name, _, c = regime
    ratios = np.array(list(c["weight_ratio"].values()))
    assert len(ratios) >= 4
    assert np.all(np.abs(ratios - 1.0) < 0.20), (name, c["weight_ratio"])


def test_variable_comparison_dropped_with_its_reason(regime):
    name, _, c = regime
    assert c["variable_comp"] is not None and not c["variable_comp_used"], (name, c)
    assert c["variable_comp_reason"].startswith("variable"), c["variable_comp_reason"]
