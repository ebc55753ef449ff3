"""The reduce step on a small simulated night: catalogue scale, flip offset, ensemble export."""

import json

import numpy as np
import pytest
from astropy.table import Table

from tsphot import demo, pipeline, synthetic
from tsphot.settings import ObjectSpec, parse_object


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("diff")
    cfg = synthetic.SimConfig(
        n_frames=150,
        size=(256, 256),
        n_stars=45,
        seed=7,
        meridian_flip=True,
        clouds=False,
        transit_duration_h=1.2,
    )
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
    stars = truth.stars
    roles = truth.meta["roles"]
    comps = [i for i in roles["comparisons"] if i != roles["variable_comp"]][:5]
    settings = demo.settings_for(base / "night", base / "out", truth, quiet=True)
    # the first comparison carries its catalogue magnitude (the truth's, above the atmosphere)
    settings.comps = [
        ObjectSpec(
            name=f"C{k + 1}",
            x=float(stars["x"][i]),
            y=float(stars["y"][i]),
            mag=float(stars["mag"][i]) if k == 0 else None,
        )
        for k, i in enumerate(comps)
    ]
    pipeline.run(settings)
    out = base / "out"
    return truth, out, json.loads((out / "run.json").read_text())


def test_catalogue_scale_gives_true_magnitude(run):
    truth, out, record = run
    lc = Table.read(out / "lightcurve_T1.ecsv")
    assert record["mag_scale"]["comparison"] == "C1"
    # out of transit, the target's magnitude on C1's scale is its true magnitude: extinction
    # and transparency are common to both; the ensemble's noise is a few mmag
    rows = truth.star_frames(truth.meta["roles"]["target"])
    oot = np.asarray(rows["astro_factor"], float) > 0.9999
    sel = oot & np.asarray(lc["valid"], bool)
    true_mag = float(truth.stars["mag"][truth.meta["roles"]["target"]])
    assert np.median(lc["mag"].value[sel]) == pytest.approx(true_mag, abs=0.01)


def test_meridian_flip_offered_to_the_fit(run):
    _, _, record = run
    fit = record["objects"]["T1"]["fit"]
    assert fit is not None
    # the flip is a candidate term; BIC decides whether it stays, so only its consideration
    # is certain: the chosen terms are a subset of the candidates
    assert set(fit["terms"]) <= {"airmass", "flip", "time1", "time2"}


def test_leave_one_out_curves_exported(run):
    _, out, record = run
    ens = Table.read(out / "ensemble.ecsv")
    names = [c["name"] for c in record["comparison_stars"]]
    for n in names:
        assert f"loo_{n}" in ens.colnames and f"loo_err_{n}" in ens.colnames
    w = {c["name"]: c["weight"] for c in ens.meta["comparison_stars"]}
    assert sum(w.values()) == pytest.approx(1.0)
    # each used star's leave-one-out curve scatters as its reported error says
    for c in record["comparison_stars"]:
        if c["used"]:
            assert 0.6 < c["chi2_red"] < 1.6, c


def test_noise_budget_per_star(run):
    _, _, record = run
    b = record["noise_budget"]["T1"]
    assert set(b["terms"]) == {
        "photon",
        "background",
        "background_excess",
        "scintillation",
        "ensemble",
        "total",
    }
    # a simulated sky is white: the empty-sky apertures find no significant excess
    assert b["terms"]["background_excess"] == 0.0
    assert not record["background_excess"]["applied"]
    total = np.sqrt(sum(v**2 for k, v in b["terms"].items() if k != "total"))
    assert b["terms"]["total"] == pytest.approx(total, rel=0.05)
    assert 0.7 < b["ratio"] < 1.4


def test_catalogue_magnitude_on_the_command_line():
    spec = parse_object("C1=12.5,40.25#11.42", "C")
    assert (spec.x, spec.y, spec.mag) == (12.5, 40.25, 11.42)
