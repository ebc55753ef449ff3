"""Bad input gives a clear message naming the file and the problem; the run goes on."""

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tsphot import demo, pipeline, synthetic
from tsphot.errors import SettingsError
from tsphot.settings import ObjectSpec

N = 24


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    cfg = synthetic.SimConfig(n_frames=N, size=(256, 256), n_stars=60, seed=5, cloud_frame=7)
    truth = synthetic.simulate_night(base / "night", cfg, workers=2)
    raw = base / "night" / "raw"
    # a frame of another size, a text file posing as FITS, and a file that does not exist
    hdr = fits.getheader(raw / "sci_0003.fits")
    hdr["DATE-OBS"] = "2017-12-20T09:00:00.000"
    fits.PrimaryHDU(np.zeros((100, 120), np.uint16), header=hdr).writeto(raw / "sci_small.fits")
    (raw / "sci_notfits.fits").write_text("SIMPLE = this is not a FITS file\n")
    return base, truth


@pytest.fixture(scope="module")
def bad_run(night):
    base, truth = night
    raw = base / "night" / "raw"
    settings = demo.settings_for(base / "night", base / "out", truth, quiet=True)
    settings.frames = [str(raw / "sci_*.fits"), str(raw / "missing_0099.fits")]
    summary = pipeline.run(settings)
    return base / "out", summary


def test_every_bad_file_named_with_its_problem(bad_run):
    _, summary = bad_run
    bad = {k.split("/")[-1]: v for k, v in summary["frames_bad"].items()}
    assert "missing_0099.fits" in bad and "not found" in bad["missing_0099.fits"]
    assert "sci_notfits.fits" in bad and "not a FITS file" in bad["sci_notfits.fits"]
    assert "sci_small.fits" in bad and "120x100" in bad["sci_small.fits"]


def test_thick_cloud_frame_left_out_of_the_light_curve(bad_run):
    out, _ = bad_run
    lc = Table.read(out / "lightcurve_T1.ecsv")
    row = lc[lc["file"] == "sci_0007.fits"][0]
    # simulated transparency 0.02 in that frame; the comparison ensemble sees the same
    assert row["transparency"] == pytest.approx(0.02, rel=0.3)
    assert row["status"] == "cloud" and not row["valid"]
    others = lc[(lc["file"] != "sci_0007.fits") & np.isfinite(lc["transparency"])]
    assert len(others) == N - 1
    assert np.all(others["transparency"] > 0.5)
    assert np.sum(others["status"] == "cloud") == 0


def test_run_goes_on_and_nothing_is_dropped(bad_run):
    out, summary = bad_run
    assert summary["frames"] == N + 3
    assert summary["frames_ok"] == N  # the cloud frame is measured, and flagged later
    res = Table.read(out / "results.ecsv")
    files = set(res["file"])
    assert {"missing_0099.fits", "sci_notfits.fits", "sci_small.fits", "sci_0007.fits"} <= files
    bad_rows = res[np.isin(res["file"], ["sci_notfits.fits", "sci_small.fits"])]
    assert all(bad_rows["status"] != "ok") and all(len(str(r)) > 0 for r in bad_rows["reason"])
    record = json.loads((out / "run.json").read_text())
    assert record["frames"]["by_status"]["ok"] == N
    assert N - 3 <= record["objects"]["T1"]["frames_measured"] <= N - 1


def test_target_outside_the_frame_stops_before_work(night, tmp_path):
    base, truth = night
    settings = demo.settings_for(base / "night", tmp_path / "out", truth, quiet=True)
    settings.targets = [ObjectSpec(name="Far", x=900.0, y=40.0)]
    with pytest.raises(SettingsError, match=r"'Far' at \(900\.0, 40\.0\) px is outside"):
        pipeline.run(settings)


def test_unwritable_output_named(night, tmp_path):
    base, truth = night
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = demo.settings_for(base / "night", blocker / "out", truth, quiet=True)
    with pytest.raises(SettingsError, match="output folder"):
        pipeline.run(settings)
    shutil.rmtree(tmp_path, ignore_errors=True)
