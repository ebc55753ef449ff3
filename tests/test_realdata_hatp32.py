"""End to end on the real HAT-P-32 b night (MicroObservatory, 142 frames) vs published results."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from tsphot import datasets, pipeline
from tsphot.settings import TransitSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hatp32-microobservatory"
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not present at {DATA}"),
]
# Ephemeris from EXOTIC's inits.json for this sample set (see the data README):
# predicted mid-transit this night 2458107.71129 BJD_TDB.
PREDICTED_T0 = 2458107.71129
PUBLISHED_SCATTER = 0.0054  # EXOTIC's residual scatter for these frames
TARGET_SCATTER = 0.0048  # what tsphot must reach (the goal; a quick ensemble: ~0.50 %)


@pytest.fixture(scope="module")
def hat_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hatp32")
    settings = datasets.hatp32_settings(
        out,
        data_dir=DATA,
        # no --comp: the comparison ensemble is chosen from the field; no --gain: the headers
        # carry none, so it is estimated from the stars
        transit=TransitSpec(
            t0=PREDICTED_T0, period=2.1500082, rp=0.1489, a=5.344, inc=88.98, u=[0.45, 0.25]
        ),
        detrend=["airmass"],
        quiet=True,
    )
    summary = pipeline.run(settings)
    return out, summary, json.loads((out / "run.json").read_text())


def test_every_frame_reported(hat_run):
    out, summary, _record = hat_run
    assert summary["frames"] == 142
    res = Table.read(out / "results.ecsv")
    assert len(set(res["file"])) == 142
    assert set(res["status"]) <= {"ok", "saturated", "near_edge", "off_frame", "no_flux"}


def test_transit_found_at_ephemeris_with_published_depth(hat_run):
    _, _, record = hat_run
    fit = record["objects"]["HAT-P-32"]["fit"]
    dt_min = abs(fit["params"]["t0"] - PREDICTED_T0) * 1440
    assert dt_min < 6.0, f"mid-time {dt_min:.1f} min from the ephemeris"
    assert 0.019 <= fit["params"]["depth"] <= 0.029
    # residual scatter per point better than EXOTIC's published 0.54 %, and at most 0.48 %
    assert fit["residual_rms"] <= PUBLISHED_SCATTER
    assert fit["residual_rms"] <= TARGET_SCATTER


def test_errors_from_the_noise_model_match_the_scatter(hat_run):
    _, _, record = hat_run
    obj = record["objects"]["HAT-P-32"]
    ratio = obj["median_err_rel_flux"] / obj["fit"]["residual_rms"]
    assert 0.8 <= ratio <= 1.25, ratio
    # the gain is not in the headers: it was estimated from the comparison stars
    gain = record["gain"]
    assert gain["source"] == "estimated" and gain["n_stars"] >= 5
    # the background excess measured on empty-sky apertures is in every star's error
    assert record["background_excess"]["applied_var_e2_at_chosen_radius"] > 0


@pytest.mark.xfail(
    strict=True,
    reason="open question for the lead: with the background excess in the model (empty "
    "apertures scatter 2x their CCD-equation error) the comparison stars give 30.5 +- 11.7 "
    "e-/ADU, outside this prior; the 8 e-/ADU found without it put the missing background "
    "variance into the photon term. A rough photon transfer of the sky itself (MAD of 8x8 px "
    "sums of ten consecutive-frame differences, sky ~110 ADU above the frames' 243 ADU floor) "
    "gives 14-62 e-/ADU (median 30) as a lower bound: the camera's gain may not be what this "
    "prior assumes.",
)
def test_gain_estimate_within_the_prior_of_the_camera(hat_run):
    _, _, record = hat_run
    # a 12-bit camera of ~30-40 ke- full well has several e-/ADU
    gain = record["gain"]
    assert 4.0 < gain["value"] < 20.0 and gain["error"] < 0.3 * gain["value"]


def test_times_match_reference_bjd(hat_run):
    out, _, _ = hat_run
    lc = Table.read(out / "lightcurve_HAT-P-32.ecsv")
    ref = {
        r["file"]: float(r["bjd_tdb_mid"])
        for r in csv.DictReader(open(DATA / "reference_times.csv"))
    }
    diff_s = [(float(b) - ref[f]) * 86400 for b, f in zip(lc["BJD_TDB"], lc["file"], strict=True)]
    assert np.max(np.abs(diff_s)) < 1.0


def test_positions_follow_the_drift(hat_run):
    out, _, _ = hat_run
    res = Table.read(out / "results.ecsv")
    t = res[res["object"] == "HAT-P-32"]
    approx = {
        r["file"]: (float(r["target_x"]), float(r["target_y"]))
        for r in csv.DictReader(open(DATA / "approx_star_positions.csv"))
    }
    d = [
        np.hypot(float(r["x"]) - approx[r["file"]][0], float(r["y"]) - approx[r["file"]][1])
        for r in t
    ]
    assert np.max(d) < 1.5  # the README's positions are good to ~0.5 px
