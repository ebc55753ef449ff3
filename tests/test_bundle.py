"""Stack bundles: a run bundled in one place replays to identical products in another."""

import json
import shutil
import zipfile

import numpy as np
import pytest
from astropy.io import fits

from tsphot import cli, records
from tsphot.ingest import read_header, read_pixels
from tsphot.products import bundle


@pytest.fixture(scope="module")
def bundles(small_run, tmp_path_factory):
    run_dir, _ = small_run
    where = tmp_path_factory.mktemp("bundles")
    plain = bundle.make_bundle(run_dir, where / "plain.zip")
    full = bundle.make_bundle(run_dir, where / "full.zip", with_data=True)
    return run_dir, plain, full


def test_bundle_contents(bundles, small_run):
    run_dir, plain, full = bundles
    run = json.loads((run_dir / "run.json").read_text())
    with zipfile.ZipFile(plain.path) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        settings = json.loads(z.read("settings.json"))
        versions = json.loads(z.read("versions.json"))
    assert {"manifest.json", "settings.json", "versions.json", "calibration/masters.npz"} <= names
    assert settings == run["settings"]
    assert versions["tsphot"] and versions["numpy"] and versions["astropy"]
    ex = manifest["exposures"]
    assert [e["order"] for e in ex] == list(range(len(run["inputs"])))
    for e, i in zip(ex, run["inputs"], strict=True):
        assert e["sha256"] == i["sha256"] and e["path"] == i["path"] and e["role"] == "science"
        assert e["header"]["exptime"] == 120.0 and e["header"]["filter"] == "V"
        assert e["stored"] is None
    roles = {p["path"]: p["role"] for p in manifest["products"]}
    for f in ("results.ecsv", "lightcurve_T1.ecsv", "exports/aavso_extended.txt",
              "finder.png", "report.html", "run.json"):  # fmt: skip
        assert f in roles and f"products/{f}" in names, f
    assert roles["results.ecsv"] == "table" and roles["finder.png"] == "picture"
    assert manifest["calibration"][0]["made_from"] == run["calibration"]
    with zipfile.ZipFile(full.path) as z:
        stored = [n for n in z.namelist() if n.startswith("data/")]
        manifest = json.loads(z.read("manifest.json"))
    assert len(stored) == len(run["inputs"])
    assert all(e["compression"] == "RICE_1" for e in manifest["exposures"])
    # the bundle is registered as the run's stack file
    recs = records.RunRecords.read(run_dir / "records.json")
    files = {sf.sha256: sf for sf in recs.stack_files}
    assert plain.sha256 in files and full.sha256 in files
    assert files[full.sha256].with_data and files[full.sha256].tool_id == recs.tool.id
    assert full.record.id in recs.tool.stack_file_ids


def test_replay_from_the_bundle_alone_in_a_fresh_folder(bundles, small_night, tmp_path):
    """The exposures' folder is gone: the bundle's own (compressed) copies replay the run."""
    _, _, full = bundles
    base, _ = small_night
    night = base / "night"
    hidden = base / "night-hidden"
    night.rename(hidden)
    try:
        res = bundle.replay(full.path, out=tmp_path / "work")
    finally:
        hidden.rename(night)
    assert res.identical, res.summary()
    assert "the bundle's own copies" in res.source
    compared = {c.path for c in res.compared}
    assert {"results.ecsv", "lightcurve_T1.ecsv", "lightcurve_CHK.csv", "run.json",
            "exports/aavso_extended.txt", "exports/results.fits",
            "exports/measurements_aij.tbl"} <= compared  # fmt: skip
    # the numbers themselves are byte for byte the same
    same = {c.path for c in res.compared if c.byte_identical}
    assert {"lightcurve_T1.ecsv", "exports/aavso_exoplanet_T1.txt"} <= same
    assert res.summary().startswith("replay identical")


def test_replay_from_the_original_files(bundles, tmp_path, capsys):
    _, plain, _ = bundles
    rc = cli.main(["replay", str(plain.path), "--out", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("replay identical") and "original paths" in out


def test_replay_from_a_data_folder_and_changed_or_missing_files(bundles, small_night, tmp_path):
    _, plain, _ = bundles
    base, _ = small_night
    copy = tmp_path / "elsewhere"
    shutil.copytree(base / "night" / "raw", copy)
    # a changed exposure and a missing one are both named
    changed = sorted(copy.glob("sci_*.fits"))[3]
    with fits.open(changed, mode="update") as h:
        h[0].header["OBSERVER"] = "someone"
    gone = sorted(copy.glob("sci_*.fits"))[5]
    gone.unlink()
    with pytest.raises(bundle.ReplayError) as exc:
        bundle.replay(plain.path, data_dir=copy, out=tmp_path / "w1")
    msg = str(exc.value)
    assert "2 exposure(s) missing or changed" in msg
    assert f"{changed}: changed since the run" in msg
    assert f"{gone.name}: missing from {copy}" in msg
    # restored, the replay from that folder is identical
    shutil.copy(base / "night" / "raw" / changed.name, changed)
    shutil.copy(base / "night" / "raw" / gone.name, gone)
    res = bundle.replay(plain.path, data_dir=copy, out=tmp_path / "w2")
    assert res.identical, res.summary()


def test_replay_names_the_rows_that_differ(bundles, tmp_path, monkeypatch):
    """Were a change of code or library to move one number, the replay says where."""
    from tsphot.products import export

    _, plain, _ = bundles
    original = export.lightcurve_table

    def nudged(name, red, frames, results):
        t = original(name, red, frames, results)
        if name == "T1":
            t["rel_flux"][2] += 1e-12
        return t

    monkeypatch.setattr(export, "lightcurve_table", nudged)
    res = bundle.replay(plain.path, out=tmp_path / "w")
    assert not res.identical
    bad = {c.path: c for c in res.compared if not c.identical}
    assert {"lightcurve_T1.ecsv", "lightcurve_T1.csv", "exports/lightcurve_T1.fits"} <= set(bad)
    diffs = bad["lightcurve_T1.ecsv"].differences
    assert len(diffs) == 1 and diffs[0].startswith("row 2, column rel_flux: ")
    assert "replay DIFFERS" in res.summary() and "row 2, column rel_flux" in res.summary()


def test_a_damaged_bundle_is_refused(bundles, tmp_path):
    _, plain, _ = bundles
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(plain.path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "products/lightcurve_T1.csv":
                data = data.replace(b"1.0", b"1.1", 1)
            dst.writestr(item, data)
    with pytest.raises(bundle.ReplayError, match=r"lightcurve_T1\.csv damaged"):
        bundle.replay(tampered, out=tmp_path / "w")


def test_lossless_compression(tmp_path):
    rng = np.random.default_rng(3)
    ints = rng.integers(0, 65535, (40, 50)).astype(np.uint16)
    hdr = fits.Header({"EXPTIME": 10.0, "DATE-OBS": "2020-01-01T00:00:00", "FILTER": "R"})
    fits.PrimaryHDU(ints, header=hdr).writeto(tmp_path / "i.fits")
    floats = rng.normal(1000, 30, (40, 50)).astype(np.float32)
    floats[3, 4] = np.nan
    fits.PrimaryHDU(floats, header=hdr).writeto(tmp_path / "f.fits")
    (tmp_path / "t.fits").write_text("not a FITS file")
    for name, method in (("i", "RICE_1"), ("f", "GZIP_2 (no quantisation)"), ("t", "none")):
        src, dst = tmp_path / f"{name}.fits", tmp_path / "out" / f"{name}.fits"
        assert bundle.compress_exposure(str(src), dst) == method
        if name == "t":
            assert dst.read_bytes() == src.read_bytes()
            continue
        a, b = read_pixels(str(src))[0], read_pixels(str(dst))[0]
        assert np.array_equal(a, b, equal_nan=True) and a.dtype == b.dtype
        ha, hb = read_header(str(src)), read_header(str(dst))
        assert (ha.exptime, ha.jd_utc_mid, ha.filter) == (hb.exptime, hb.jd_utc_mid, hb.filter)
        assert bundle.pixels_sha256(str(src)) == bundle.pixels_sha256(str(dst))


def test_bundle_command_and_bad_bundles(small_run, tmp_path, capsys):
    run_dir, _ = small_run
    rc = cli.main(["bundle", str(run_dir), "--out", str(tmp_path / "b.zip")])
    assert rc == 0 and "without the exposures" in capsys.readouterr().out
    (tmp_path / "junk.zip").write_text("junk")
    assert cli.main(["replay", str(tmp_path / "junk.zip")]) == 2
    assert "not a tsphot bundle" in capsys.readouterr().err
    assert cli.main(["bundle", str(tmp_path), "--out", str(tmp_path / "c.zip")]) == 2
    assert "not a tsphot run folder" in capsys.readouterr().err


def test_executors_give_bit_identical_tables(small_run, small_night, tmp_path):
    """The process pool and the serial executor write the same bytes (tables and figures: with
    the pool the figures are drawn in forked processes)."""
    from tsphot import demo, pipeline

    run_dir, _ = small_run
    base, truth = small_night
    settings = demo.settings_for(
        base / "night", tmp_path / "p", truth, quiet=True, executor="processes", workers=2
    )
    pipeline.run(settings)
    figures = [f"{n}.{ext}" for n in ("lightcurve", "conditions", "finder", "noise_budget")
               for ext in ("png", "pdf")]  # fmt: skip
    for name in ("results.ecsv", "lightcurve_T1.ecsv", "lightcurve_CHK.ecsv", *figures):
        assert (tmp_path / "p" / name).read_bytes() == (run_dir / name).read_bytes(), name
