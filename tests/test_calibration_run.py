"""Calibration inside `tsphot run` and the `tsphot calibrate` command, on a simulated night:
a folder of mixed raw frames sorted by IMAGETYP, masters chosen per frame and recorded, and a
hot pixel under an aperture flagged in the results."""

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tsphot import calibrate, cli, pipeline, synthetic
from tsphot.settings import ObjectSpec, make_settings


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("calrun")
    cfg = synthetic.SimConfig(
        n_frames=12,
        size=(256, 256),
        n_stars=60,
        seed=7,
        n_hot_pixels=600,  # enough that some star's aperture crosses one
        n_dead_pixels=20,
        n_unstable_pixels=20,
        clouds=False,
    )
    truth = synthetic.simulate_night(root / "night", cfg)
    t = truth.stars[truth.target]
    settings = make_settings(
        frames=[str(root / "night" / "raw")],  # science and calibration frames together
        out=str(root / "out"),
        targets=[ObjectSpec(name="T1", x=float(t["x"]), y=float(t["y"]))],
        executor="serial",
        save_calibrated=True,
        quiet=True,
    )
    summary = pipeline.run(settings)
    return truth, root / "out", summary


def test_mixed_folder_sorted_by_header(night):
    truth, out, summary = night
    cfg = truth.config
    assert summary["frames"] == cfg.n_frames  # the 25 calibration frames are not science
    record = json.loads((out / "run.json").read_text())
    cal = record["calibration"]
    kinds = sorted(m["type"] for m in cal["masters"])
    assert kinds == ["bias", "bpm", "dark", "flat"]
    (choice,) = cal["choices"]  # one night, one exposure time: one set for every frame
    assert len(choice["frames"]) == cfg.n_frames
    assert choice["dark"]["scale"] == 1.0 and "same exposure" in choice["dark"]["why"]
    assert choice["flat"]["file"].startswith("flat_V_")


def test_hot_pixel_under_aperture_flagged(night):
    """bad_pixel is set exactly for the rows whose aperture holds a masked pixel's centre."""
    truth, out, _ = night
    res = Table.read(out / "results.ecsv")
    lib = calibrate.load_library(out / "calibration")
    bpm = calibrate.read_master(lib.path(lib.of_type("bpm")[0]), None)
    hot_true = np.zeros(bpm.shape, bool)
    hot_true[truth.meta["hot_pixels"]["y"], truth.meta["hot_pixels"]["x"]] = True
    assert np.array_equal((bpm.astype(np.uint8) & calibrate.HOT) > 0, hot_true)
    by, bx = np.nonzero(bpm)
    r = float(res["aperture_radius"][0])
    measured = np.isfinite(np.asarray(res["x"], float))
    x, y = np.asarray(res["x"], float)[measured], np.asarray(res["y"], float)[measured]
    near = (bx[None, :] - x[:, None]) ** 2 + (by[None, :] - y[:, None]) ** 2 <= r * r
    expected = near.any(axis=1)
    got = np.asarray(res["bad_pixel"])[measured]
    assert expected.sum() >= 3, "the test night has no aperture over a bad pixel"
    assert np.array_equal(got, expected)
    flagged = res[np.asarray(res["bad_pixel"]) & (res["status"] == "ok")]
    assert all("hot, dead or unstable" in s for s in flagged["reason"])


def test_saved_calibrated_frames(night):
    truth, out, _ = night
    files = sorted((out / "calibrated").glob("*_cal.fits"))
    assert len(files) == truth.config.n_frames
    hdr = fits.getheader(files[0])
    assert hdr["CALSTAT"] == "BDF" and "dark_60s" in hdr["SUBDARK"]


def test_calibrate_command_builds_library_and_reports_choices(night, tmp_path, capsys):
    truth, _, _ = night
    raw = truth.out_dir / "raw"
    lib_dir = tmp_path / "lib"
    code = cli.main(
        [
            "calibrate",
            str(raw),
            "--library",
            str(lib_dir),
            "--save-calibrated",
            "--out",
            str(tmp_path / "cal"),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "4 masters" in text and "sci_0000.fits: bias bias_1x1" in text
    index = json.loads((lib_dir / "library.json").read_text())
    assert {m["type"] for m in index["masters"]} == {"bias", "dark", "flat", "bpm"}
    rec = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert len(rec["frames"]) == truth.config.n_frames
    assert all(f["status"] == "ok" for f in rec["frames"])
    # the run can use the library directly
    settings = make_settings(
        frames=[str(raw / "sci_*.fits")],
        out=str(tmp_path / "run"),
        library=str(lib_dir),
        targets=[ObjectSpec(name="T1", x=float(truth.stars[0]["x"]), y=float(truth.stars[0]["y"]))],
        executor="serial",
        quiet=True,
    )
    summary = pipeline.run(settings)
    assert summary["frames_ok"] == truth.config.n_frames
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["calibration"]["library"] == str(lib_dir)


def test_only_calibration_frames_is_a_clear_error(night, tmp_path):
    truth, _, _ = night
    settings = make_settings(
        frames=[str(truth.out_dir / "raw" / "bias_*.fits")],
        out=str(tmp_path),
        targets=[ObjectSpec(name="T1", x=10.0, y=10.0)],
        quiet=True,
    )
    with pytest.raises(pipeline.InputError, match="calibration frames"):
        pipeline.run(settings)
