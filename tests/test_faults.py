"""The bad-input matrix: each fault gives a message naming the file, keyword or pixel region and
what to do; one bad exposure never ends a run, and nothing measured from the good ones is lost.

One simulated night gets every per-frame fault at once and is reduced in one run; run-level
faults (unusable settings) are checked to stop before any frame is measured. Also covered in
test_bad_input.py: missing file, thick cloud, target off the frame, unwritable output folder;
in test_store.py: a run killed part-way.
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tsphot import pipeline, synthetic
from tsphot.errors import InputError, SettingsError
from tsphot.settings import load_toml, make_settings

N = 24
NAN_FRAME, SAT_FRAME, DUP_FRAME = 5, 9, 12
SWAP = (10, 15)  # these two files swap names: the file list is out of time order


def _sci(raw, k):
    return raw / f"sci_{k:04d}.fits"


def _copy(src, dst, data=None, **cards):
    """Copy an exposure, optionally with other pixels and header cards (None deletes a card)."""
    with fits.open(src) as h:
        hdr = h[0].header.copy()
        pix = h[0].data if data is None else data
    for k, v in cards.items():
        key = k.replace("_", "-")
        if v is None:
            hdr.remove(key, ignore_missing=True)
        else:
            hdr[key] = v
    if pix is not None and pix.dtype.kind == "f":
        for k in ("BZERO", "BSCALE"):
            hdr.remove(k, ignore_missing=True)
    fits.PrimaryHDU(pix, header=hdr).writeto(dst, overwrite=True)


def _later(raw, k, seconds):
    """DATE-OBS a few seconds after exposure k's: a time no other frame has."""
    from astropy import units as u
    from astropy.time import Time

    return (Time(fits.getheader(_sci(raw, k))["DATE-OBS"]) + seconds * u.s).isot


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    cfg = synthetic.SimConfig(n_frames=N, size=(256, 256), n_stars=60, seed=8)
    truth = synthetic.simulate_night(base / "clean", cfg, workers=2)
    shutil.copytree(base / "clean", base / "bad")
    raw = base / "bad" / "raw"
    s = make_settings(base / "clean" / "tsphot.toml", out=str(base / "plan"), quiet=True)
    (base / "plan").mkdir()
    frames = pipeline.ingest.ingest(pipeline.ingest.expand_inputs(s.frames))
    plan, _ = pipeline.plan_run(s, frames, base / "plan")
    c1 = next(o for o in plan.objects if o.name == "C1")

    def near(k, x, y):  # a true star's position on frame k, from its position on frame 0
        f = truth.frames[truth.frames["frame"] == k]
        f0 = truth.frames[truth.frames["frame"] == 0]
        i = int(np.argmin(np.hypot(np.asarray(f0["x"]) - x, np.asarray(f0["y"]) - y)))
        row = f[f["star"] == f0["star"][i]][0]
        return float(row["x"]), float(row["y"])

    blob = _sci(raw, 2).read_bytes()
    (raw / "bad_truncated.fits").write_bytes(blob[: len(blob) // 2])
    (raw / "bad_notfits.fits").write_text("RA,Dec,flux\n1,2,3\n")
    (raw / "bad_corrupt.fits").write_bytes(b"SIMPLE  =" + bytes(range(256)) * 20)
    hdr = fits.getheader(_sci(raw, 3))
    fits.PrimaryHDU(header=hdr).writeto(raw / "bad_empty.fits")  # header only
    _copy(
        _sci(raw, 3),
        raw / "bad_zeros.fits",
        np.zeros((256, 256), np.uint16),
        DATE_OBS=_later(raw, 3, 7),
    )
    nanny = fits.getdata(_sci(raw, 4)).astype(np.float32)
    nanny[:200] = np.nan
    _copy(_sci(raw, 4), raw / "bad_mostly_nan.fits", nanny, DATE_OBS=_later(raw, 4, 7))
    _copy(_sci(raw, 6), raw / "bad_no_exptime.fits", EXPTIME=None, EXPOSURE=None)
    _copy(_sci(raw, 6), raw / "bad_exptime_text.fits", EXPTIME="sixty")
    _copy(_sci(raw, 6), raw / "bad_exptime_negative.fits", EXPTIME=-60.0)
    _copy(_sci(raw, 7), raw / "bad_no_date.fits", DATE_OBS=None)
    _copy(_sci(raw, 7), raw / "bad_date_text.fits", DATE_OBS="yesterday evening")
    _copy(_sci(raw, 13), raw / "other_filter.fits", FILTER="R", DATE_OBS=_later(raw, 13, 7))
    _copy(
        _sci(raw, 14),
        raw / "other_binning.fits",
        XBINNING=2,
        YBINNING=2,
        DATE_OBS=_later(raw, 14, 7),
    )
    small = fits.getdata(_sci(raw, 15))[:100, :120]
    _copy(_sci(raw, 15), raw / "other_size.fits", small, DATE_OBS=_later(raw, 15, 7))
    rng = np.random.default_rng(1)
    blank = rng.normal(1000, 15, (256, 256)).astype(np.float32)  # sky, no star: cannot register
    _copy(_sci(raw, 16), raw / "bad_blank.fits", blank, DATE_OBS=_later(raw, 16, 7))
    shutil.copy(_sci(raw, DUP_FRAME), raw / "dup_copy.fits")
    # in place: NaN pixels over the target in one frame, a comparison star saturated in another
    t1 = next(o for o in plan.objects if o.name == "T1")
    tx, ty = near(NAN_FRAME, t1.x, t1.y)
    pix = fits.getdata(_sci(raw, NAN_FRAME)).astype(np.float32)
    pix[int(ty) - 1 : int(ty) + 2, int(tx) - 1 : int(tx) + 2] = np.nan
    _copy(_sci(raw, NAN_FRAME), _sci(raw, NAN_FRAME), pix)
    cx, cy = near(SAT_FRAME, c1.x, c1.y)
    pix = fits.getdata(_sci(raw, SAT_FRAME)).copy()
    iy, ix = round(cy), round(cx)
    pix[iy - 2 : iy + 3, ix - 2 : ix + 3] = 65535
    _copy(_sci(raw, SAT_FRAME), _sci(raw, SAT_FRAME), pix)
    a, b = _sci(raw, SWAP[0]), _sci(raw, SWAP[1])
    a.rename(raw / "swap.tmp")
    b.rename(a)
    (raw / "swap.tmp").rename(b)
    return base, truth, (tx, ty)


@pytest.fixture(scope="module")
def runs(nights):
    base, _, _ = nights
    out = {}
    for name in ("clean", "bad"):
        s = make_settings(base / name / "tsphot.toml", out=str(base / f"out_{name}"), quiet=True)
        raw = base / name / "raw"
        s.frames = [str(raw / f"{p}_*.fits") for p in ("sci", "bad", "other", "dup")]
        s.frames = [p for p in s.frames if list(raw.glob(Path(p).name))]
        out[name] = pipeline.run(s)
    return base, out


def _rows(base, name="bad"):
    return Table.read(base / f"out_{name}" / "results.ecsv")


def _reason(res, file, obj="T1"):
    r = res[(res["file"] == file) & (res["object"] == obj)]
    assert len(r) == 1, f"{file} not in the results"
    return str(r["status"][0]), str(r["reason"][0])


@pytest.mark.parametrize(
    ("file", "status", "words"),
    [
        ("bad_truncated.fits", "bad_file", ["truncated", "copy it again"]),
        ("bad_notfits.fits", "bad_file", ["not a FITS file", "remove it"]),
        ("bad_corrupt.fits", "bad_file", ["corrupt FITS file", "remove it"]),
        ("bad_empty.fits", "bad_file", ["no 2-D image", "header only", "remove it"]),
        ("bad_zeros.fits", "bad_frame", ["constant", "empty frame"]),
        ("bad_mostly_nan.fits", "bad_frame", ["NaN or infinite", "x 0..255, y 0..199"]),
        ("bad_no_exptime.fits", "bad_header", ["no exposure time", "EXPTIME", "remove the file"]),
        ("bad_exptime_text.fits", "bad_header", ["EXPTIME = 'sixty'", "not a number"]),
        ("bad_exptime_negative.fits", "bad_header", ["EXPTIME = -60.0", "positive"]),
        ("bad_no_date.fits", "bad_header", ["no observation time", "add DATE-OBS"]),
        ("bad_date_text.fits", "bad_header", ["DATE-OBS = 'yesterday evening'", "ISO 8601"]),
        ("other_filter.fits", "other_filter", ["filter 'R'", "'V'", "each filter separately"]),
        ("other_binning.fits", "bad_binning", ["binned 2x2", "1x1", "separately"]),
        ("other_size.fits", "bad_size", ["120x100", "256x256", "remove it"]),
        ("bad_blank.fits", "unregistered", ["cannot register", "stars found"]),
    ],
)
def test_bad_exposure_named_with_what_to_do(runs, file, status, words):
    base, _ = runs
    res = _rows(base)
    st, why = _reason(res, file)
    assert st == status
    assert file in why  # the file is named
    for w in words:
        assert w in why, f"{w!r} not in {why!r}"
    # every object's row of that exposure says the same
    assert set(res["status"][res["file"] == file]) == {status}


def test_duplicate_measured_once_and_named(runs):
    base, _ = runs
    res = _rows(base)
    pair = {"sci_0012.fits", "dup_copy.fits"}
    st = {f: _reason(res, f) for f in pair}
    dup = [f for f, (s, _) in st.items() if s == "duplicate"]
    assert len(dup) == 1
    other = (pair - set(dup)).pop()
    assert st[other][0] == "ok"
    assert other in st[dup[0]][1] and "remove one of the copies" in st[dup[0]][1]


def test_nan_pixels_over_the_target_flag_that_point_only(runs, nights):
    base, _ = runs
    _, _, (tx, ty) = nights
    res = _rows(base)
    st, why = _reason(res, f"sci_{NAN_FRAME:04d}.fits")
    assert st == "bad_pixels"
    assert "NaN/inf pixels in the aperture" in why
    # the region named is where the NaN block is (x, y 0-based)
    assert f"x {int(tx) - 1}..{int(tx) + 1}, y {int(ty) - 1}..{int(ty) + 1}" in why
    lc = Table.read(base / "out_bad" / "lightcurve_T1.ecsv")
    row = lc[lc["file"] == f"sci_{NAN_FRAME:04d}.fits"][0]
    assert not row["valid"]
    # the other objects of that frame were measured
    others = res[(res["file"] == f"sci_{NAN_FRAME:04d}.fits") & (res["object"] != "T1")]
    assert np.mean(others["status"] == "ok") > 0.8


def test_saturated_comparison_left_out_of_that_frame_only(runs):
    base, _ = runs
    res = _rows(base)
    st, why = _reason(res, f"sci_{SAT_FRAME:04d}.fits", obj="C1")
    assert st == "saturated" and "saturation" in why and "excluded from the ensemble" in why
    c1 = res[res["object"] == "C1"]
    assert np.sum(c1["status"] == "saturated") == 1
    lc = Table.read(base / "out_bad" / "lightcurve_T1.ecsv")
    row = lc[lc["file"] == f"sci_{SAT_FRAME:04d}.fits"][0]
    assert row["valid"] and row["ens_n_stars"] == np.max(lc["ens_n_stars"]) - 1


def test_out_of_order_files_reported_in_time_order(runs):
    base, _ = runs
    res = _rows(base)
    t1 = res[(res["object"] == "T1") & (res["status"] != "bad_file")]
    t1 = t1[np.isfinite(t1["jd_utc"])]
    assert np.all(np.diff(np.asarray(t1["frame"])) > 0)
    assert np.all(np.diff(np.asarray(t1["jd_utc"])) >= 0)
    files = list(t1["file"])
    # the file named sci_0015 holds exposure 10, so it comes first
    assert files.index(f"sci_{SWAP[1]:04d}.fits") < files.index(f"sci_{SWAP[0]:04d}.fits")


def test_nothing_measured_is_lost(runs):
    base, summaries = runs
    bad, clean = summaries["bad"], summaries["clean"]
    extra = 16  # files added to the bad night
    assert bad["frames"] == N + extra
    assert bad["frames_ok"] == N  # the duplicate pair counts once
    record = json.loads((base / "out_bad" / "run.json").read_text())
    by = record["frames"]["by_status"]
    assert by["ok"] == N and sum(by.values()) == N + extra
    assert by["bad_header"] == 5 and by["bad_file"] == 4 and by["bad_frame"] == 2
    # every exposure appears, each with a reason when not ok
    res = _rows(base)
    t1 = res[res["object"] == "T1"]
    assert len(t1) == N + extra
    assert all(len(r) > 0 for r in t1["reason"][t1["status"] != "ok"])
    # an untouched frame's measurements are exactly those of the clean night
    ok_clean = _rows(base, "clean")
    for k in (1, 8, 20):
        f = f"sci_{k:04d}.fits"
        a = res[res["file"] == f]
        b = ok_clean[ok_clean["file"] == f]
        assert list(a["object"]) == list(b["object"])
        np.testing.assert_array_equal(np.asarray(a["x"]), np.asarray(b["x"]))
        np.testing.assert_array_equal(np.asarray(a["sky_median"]), np.asarray(b["sky_median"]))
    assert clean["frames_ok"] == N


def test_out_of_order_logged(nights, tmp_path, caplog):
    base, _, _ = nights
    s = make_settings(base / "bad" / "tsphot.toml", out=str(tmp_path), quiet=True)
    frames = pipeline.ingest.ingest(pipeline.ingest.expand_inputs(s.frames))
    with caplog.at_level(logging.WARNING, logger="tsphot"):
        pipeline._note_time_order(pipeline.ingest.expand_inputs(s.frames), frames)
    assert "2 exposure(s) out of time order" in caplog.text
    assert f"sci_{SWAP[1]:04d}.fits is exposure {SWAP[0] + 1} in time" in caplog.text


# ----------------------------------------------------------------------------- run-level faults


def test_settings_typo_named_with_nearest_key(nights, tmp_path):
    base, _, _ = nights
    good = (base / "clean" / "tsphot.toml").read_text()
    bad = tmp_path / "typo.toml"
    bad.write_text(good.replace("aperture =", "apperture ="))
    with pytest.raises(
        SettingsError, match=r"unknown setting 'apperture' \(did you mean 'aperture'"
    ):
        load_toml(bad)
    bad.write_text(good.replace('name = "T1"', 'nmae = "T1"'))
    with pytest.raises(SettingsError, match=r"\[targets\]\[0\]: unknown setting 'nmae'.*'name'"):
        load_toml(bad)


def test_unwritable_output_named_before_work(nights, tmp_path):
    base, _, _ = nights
    (tmp_path / "afile").write_text("")
    s = make_settings(
        base / "clean" / "tsphot.toml", out=str(tmp_path / "afile" / "out"), quiet=True
    )
    with pytest.raises(SettingsError, match=r"output folder .*afile/out: cannot write there"):
        pipeline.run(s)


def _calibrated_run(nights, tmp_path, bias=None, flat=None):
    base, _, _ = nights
    s = make_settings(base / "clean" / "tsphot.toml", out=str(tmp_path / "out"), quiet=True)
    if bias is not None:
        s.bias = bias
    if flat is not None:
        s.flat = flat
    summary = pipeline.run(s)
    return summary, json.loads((tmp_path / "out" / "run.json").read_text())


def test_calibration_frame_of_another_size_kept_apart(nights, tmp_path):
    base, _, _ = nights
    raw = base / "clean" / "raw"
    small = fits.getdata(raw / "bias_000.fits")[:128]
    _copy(raw / "bias_000.fits", tmp_path / "bias_small.fits", small)
    summary, record = _calibrated_run(
        nights, tmp_path, bias=[str(raw / "bias_*.fits"), str(tmp_path / "bias_small.fits")]
    )
    assert summary["frames_ok"] == N
    biases = [m for m in record["calibration"]["masters"] if m["type"] == "bias"]
    assert sorted(m["n_frames"] for m in biases) == [1, 10]
    assert len({m["file"] for m in biases}) == 2  # the odd one did not overwrite the master
    chosen = {c["bias"]["file"] for c in record["calibration"]["choices"]}
    full = next(m["file"] for m in biases if m["n_frames"] == 10)
    assert chosen == {full}


def test_calibration_frame_of_wrong_size_only_named(nights, tmp_path):
    base, _, _ = nights
    raw = base / "clean" / "raw"
    _copy(raw / "bias_000.fits", tmp_path / "b.fits", fits.getdata(raw / "bias_000.fits")[:128])
    summary, record = _calibrated_run(nights, tmp_path, bias=[str(tmp_path / "b.fits")])
    assert summary["frames_ok"] == N  # measured without a bias (the darks hold it)
    assert any(
        "without a bias: no bias master with 1x1 binning, 256x256 px" in a
        for a in record["assumed"]
    )


def test_calibration_frame_of_wrong_type_named(nights, tmp_path, caplog):
    base, _, _ = nights
    raw = base / "clean" / "raw"
    shutil.copy(raw / "flat_000.fits", tmp_path / "stray.fits")
    with caplog.at_level(logging.WARNING, logger="tsphot"):
        summary, _ = _calibrated_run(
            nights, tmp_path, bias=[str(raw / "bias_*.fits"), str(tmp_path / "stray.fits")]
        )
    assert "stray.fits: given as bias but IMAGETYP says flat" in caplog.text
    assert summary["frames_ok"] == N  # one stray frame is clipped out of ten biases
    # alone, a flat used as the bias leaves every flat negative: the message says where to look
    with pytest.raises(InputError, match=r"flat frame .*check that the bias and dark frames"):
        _calibrated_run(nights, tmp_path / "alone", bias=[str(tmp_path / "stray.fits")])


def test_master_flat_with_zeros_flags_the_stars_there(nights, runs, tmp_path):
    base, _, _ = nights
    raw = base / "clean" / "raw"
    clean = Table.read(base / "out_clean" / "results.ecsv")
    # a star no pixel flag touches on the clean night, so the flag below is the zeros' doing
    names = [n for n in dict.fromkeys(clean["object"]) if n.startswith("C")]
    star = next(n for n in names if not np.any(clean["bad_pixel"][clean["object"] == n]))
    first = clean[(clean["object"] == star) & (clean["frame"] == 0)][0]
    ix, iy = round(float(first["x"])), round(float(first["y"]))
    (tmp_path / "flats").mkdir()
    for p in sorted(raw.glob("flat_*.fits")):
        pix = fits.getdata(p).copy()
        pix[iy - 1 : iy + 2, ix - 1 : ix + 2] = 0  # dead pixels under the star
        _copy(p, tmp_path / "flats" / p.name, pix)
    summary, _ = _calibrated_run(nights, tmp_path, flat=[str(tmp_path / "flats" / "flat_*.fits")])
    assert summary["frames_ok"] == N
    res = Table.read(tmp_path / "out" / "results.ecsv")
    rows = res[res["object"] == star]
    assert np.mean(rows["bad_pixel"]) > 0.8  # the frames drift a little
    flagged = rows[rows["bad_pixel"]]
    assert all("dead or unstable pixel (calibration mask)" in r for r in flagged["reason"])


def test_no_usable_exposure_lists_why(tmp_path):
    (tmp_path / "a.fits").write_text("not fits")
    fits.PrimaryHDU().writeto(tmp_path / "b.fits")
    s = make_settings(out=str(tmp_path / "out"), frames=[str(tmp_path)], quiet=True)
    s.targets = [pipeline.ObjectSpec(name="T1", x=1.0, y=1.0)]
    with pytest.raises(InputError, match=r"no usable exposure.*a\.fits: not a FITS file.*b\.fits"):
        pipeline.run(s)
