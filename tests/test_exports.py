"""Exports: tables in four formats, the AAVSO reports line by line, AstroImageJ in and out."""

import json
import re

import numpy as np
import pytest
from astropy import units as u
from astropy.table import QTable, Table

from tsphot import cli, demo, pipeline
from tsphot.errors import SettingsError
from tsphot.products import aavso, aij, export
from tsphot.settings import ObjectSpec

OBSCODE = "TST01"

FORMATS = ["ecsv", "csv", "fits", "parquet"]


def _values(col):
    v = np.asarray(getattr(col, "value", col))
    return v.astype(str) if v.dtype.kind == "S" else v


@pytest.mark.parametrize("fmt", FORMATS)
def test_tables_round_trip(small_run, fmt):
    run_dir, _ = small_run
    products = export.load_products(run_dir)
    for name, source in [("results", products.results)] + [
        (f"lightcurve_{n}", t) for n, t in products.curves.items()
    ]:
        path = run_dir / "exports" / f"{name}.{export.TABLE_FORMATS[fmt][0]}"
        back = export.read_table_as(path, fmt)
        assert back.colnames == source.colnames, path
        assert len(back) == len(source)
        for c in source.colnames:
            a, b = _values(source[c]), _values(back[c])
            if a.dtype.kind == "f":
                np.testing.assert_array_equal(a, b.astype(float), err_msg=f"{path}:{c}")
            elif a.dtype.kind == "b":
                b = b if b.dtype.kind == "b" else b.astype(str) == "True"  # CSV: text
                assert np.array_equal(a, b), f"{path}:{c}"
            elif fmt == "fits":  # ASCII only: em dashes and the like are transliterated
                assert [export._ascii_safe(str(v)) for v in a] == [str(v) for v in b]
            else:
                assert [str(v) for v in a] == [str(v) for v in b], f"{path}:{c}"
            if fmt in ("ecsv", "fits", "parquet"):
                assert getattr(source[c], "unit", None) == getattr(back[c], "unit", None), c
    if fmt == "csv":
        text = (run_dir / "exports" / "results.csv").read_text()
        assert text.startswith("# units: ") and "flux [electron]" in text.splitlines()[0]
    if fmt in ("ecsv", "parquet"):
        back = export.read_table_as(run_dir / "exports" / f"results.{fmt}", fmt)
        assert back.meta["description"] == products.results.meta["description"]


# ----------------------------------------------------------------------------- AAVSO


EXT_RULES = {
    # field: (limit, pattern) per the AAVSO Extended File Format 1.2
    "STARID": (30, r".+"),
    "DATE": (16, r"\d+\.\d+"),
    "MAGNITUDE": (8, r"<?-?\d+\.\d+"),
    "MAGERR": (6, r"\d+\.\d+|na"),
    "FILTER": (5, "|".join(sorted(aavso.FILTERS))),
    "TRANS": (3, r"YES|NO"),
    "MTYPE": (3, r"STD|DIF|ABS"),
    "CNAME": (20, r".+"),
    "CMAG": (8, r"-?\d+\.\d+|na"),
    "KNAME": (20, r".+"),
    "KMAG": (8, r"-?\d+\.\d+|na"),
    "AIRMASS": (7, r"\d+\.\d+|na"),
    "GROUP": (5, r"\d+|na"),
    "CHART": (20, r".+"),
    "NOTES": (100000, r".+"),
}


def test_aavso_extended_every_line(small_run):
    run_dir, _ = small_run
    text = (run_dir / "exports" / "aavso_extended.txt").read_text()
    assert aavso.validate_extended(text) == []
    lines = text.splitlines()
    # the six required parameters, first, in order
    assert [line.split("=")[0] for line in lines[:6]] == [
        "#TYPE", "#OBSCODE", "#SOFTWARE", "#DELIM", "#DATE", "#OBSTYPE",
    ]  # fmt: skip
    assert lines[0] == "#TYPE=Extended" and lines[1] == f"#OBSCODE={OBSCODE}"
    assert lines[3] == "#DELIM=," and lines[4] == "#DATE=JD" and lines[5] == "#OBSTYPE=CCD"
    data = [line for line in lines if not line.startswith("#")]
    lc = Table.read(run_dir / "lightcurve_T1.ecsv")
    assert len(data) == int(np.sum(lc["valid"]))
    for line in lines:
        assert line.strip(), "blank line"
        assert all(32 <= ord(c) <= 126 for c in line), line
    for line in data:
        fields = line.split(",")
        assert len(fields) == 15, line
        for (name, (limit, pattern)), value in zip(EXT_RULES.items(), fields, strict=True):
            assert len(value) <= limit, (name, value)
            assert re.fullmatch(pattern, value), (name, value)
        assert fields[7] == "ENSEMBLE" and fields[8] == "na" and fields[9] == "CHK"
        # no catalogue magnitudes in this run: differential magnitudes, CNAME given
        assert fields[6] == "DIF"
        notes = dict(kv.split("=") for kv in fields[14].split("|")[1:])
        assert float(notes["VMAGINS"]) - float(notes["CMAGINS"]) == pytest.approx(
            float(fields[2]), abs=2e-4
        )
    # the values are the light curve's
    valid = np.asarray(lc["valid"], bool)
    jd = np.array([float(line.split(",")[1]) for line in data])
    mag = np.array([float(line.split(",")[2]) for line in data])
    np.testing.assert_allclose(jd, np.asarray(lc["JD_UTC"])[valid], atol=1e-6)
    np.testing.assert_allclose(mag, np.asarray(lc["diff_mag"])[valid], atol=5e-5)


def test_aavso_extended_standardised_with_catalogue_magnitudes(small_run, tmp_path):
    run_dir, _ = small_run
    products = export.load_products(run_dir)
    for k, c in enumerate(products.record["comparison_stars"]):
        c["catalog_mag"] = 12.0 + 0.1 * k
    used = [c for c in products.record["comparison_stars"] if c["used"]]
    w = np.array([c["weight"] for c in used])
    cref = float(np.sum(w * [c["catalog_mag"] for c in used]) / w.sum())
    files = export.write_exports(["aavso-extended"], products, tmp_path, aavso_filter="V")
    text = files[0].read_text()
    assert aavso.validate_extended(text) == []
    first = next(line for line in text.splitlines() if not line.startswith("#")).split(",")
    lc = products.curves["T1"]
    i = int(np.nonzero(np.asarray(lc["valid"]))[0][0])
    assert first[6] == "STD"
    assert float(first[2]) == pytest.approx(float(_values(lc["diff_mag"])[i]) + cref, abs=1e-4)
    assert f"CREFMAG={cref:.4f}" in first[14]


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda t: t.replace("#TYPE=Extended", "#TYPE=Visual"), "#TYPE must be Extended"),
        (lambda t: t.replace("#OBSCODE=TST01\n", ""), "missing parameter #OBSCODE"),
        (lambda t: t.replace("#DELIM=,", "#DELIM=|"), "not an allowed delimiter"),
        (lambda t: t.replace("#DATE=JD", "#DATE=BJD"), "#DATE must be JD, HJD or EXCEL"),
        (lambda t: t.replace("\nT1,", "\n\nT1,", 1), "blank line"),
        (lambda t: t.replace("\nT1,", "\n" + "X" * 31 + ",", 1), "STARID"),
        (
            lambda t: re.sub(r"\nT1,([\d.]+),(-?\d+)\.\d+,", r"\nT1,\1,\2,", t, count=1),
            "needs a decimal point",
        ),
        (lambda t: t.replace(",V,NO,", ",Q,NO,", 1), "not an AAVSO filter code"),
        (lambda t: t.replace(",DIF,ENSEMBLE,", ",DIF,na,", 1), "needs CNAME"),
        (lambda t: t.replace(",NO,DIF,", ",NO,DIF,x,", 1), "16 fields"),
    ],
)
def test_aavso_extended_validator_catches(small_run, edit, complaint):
    run_dir, _ = small_run
    text = (run_dir / "exports" / "aavso_extended.txt").read_text()
    problems = aavso.validate_extended(edit(text))
    assert any(complaint in p for p in problems), problems


def test_aavso_exoplanet_every_line(small_run):
    run_dir, _ = small_run
    text = (run_dir / "exports" / "aavso_exoplanet_T1.txt").read_text()
    assert aavso.validate_exoplanet(text) == []
    lines = text.splitlines()
    params = dict(line[1:].split("=", 1) for line in lines if re.match(r"#[A-Z_]+=", line))
    for key in ("TYPE", "OBSCODE", "SOFTWARE", "DELIM", "DATE_TYPE", "OBSTYPE", "STAR_NAME",
                "EXOPLANET_NAME", "BINNING", "EXPOSURE_TIME", "FILTER", "DETREND_PARAMETERS",
                "MEASUREMENT_TYPE"):  # fmt: skip
        assert key in params, key
    assert params["TYPE"] == "EXOPLANET" and params["DATE_TYPE"] == "BJD_TDB"
    assert params["MEASUREMENT_TYPE"] == "Rnflux" and params["FILTER"] == "V"
    assert params["BINNING"] == "1x1" and float(params["EXPOSURE_TIME"]) == 120
    assert params["DETREND_PARAMETERS"].split(",")[0] == "AIRMASS"
    assert "Tc=" in params["RESULTS"] and "Period=" in params["PRIORS"]
    assert len(params["RESULTS"]) <= 250 and len(params["PRIORS"]) <= 250
    n_det = len(params["DETREND_PARAMETERS"].split(","))
    data = [line for line in lines if not line.startswith("#")]
    lc = Table.read(run_dir / "lightcurve_T1.ecsv")
    valid = np.asarray(lc["valid"], bool)
    assert len(data) == valid.sum()
    rows = np.array([[float(v) for v in line.split(",")] for line in data])
    assert rows.shape[1] == 3 + n_det
    for line in data:
        date, diff, err = line.split(",")[:3]
        assert re.fullmatch(r"\d{7}\.\d{8}", date)
        assert re.fullmatch(r"\d+\.\d{8}", diff) and len(diff.replace(".", "")) <= 15
        assert re.fullmatch(r"\d+\.\d{6}", err) and len(err.replace(".", "")) <= 12
    np.testing.assert_allclose(rows[:, 0], np.asarray(lc["BJD_TDB"])[valid], atol=1e-8)
    np.testing.assert_allclose(rows[:, 3], np.asarray(lc["airmass"])[valid], atol=1e-6)
    # undetrended relative flux, normalised out of transit: the model's out-of-transit
    # baseline sits near 1 and the ratio to the light curve is one constant
    rel = np.asarray(lc["rel_flux"])[valid]
    ratio = rows[:, 1] / rel
    assert np.ptp(ratio) < 1e-6
    baseline = rel / np.asarray(lc["detrended_flux"])[valid]
    out_of_transit = np.asarray(lc["model"])[valid] / baseline > 1 - 1e-6
    assert 3 <= out_of_transit.sum() < valid.sum()
    assert np.median(rows[out_of_transit, 1]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda t: t.replace("#TYPE=EXOPLANET", "#type=EXOPLANET"), "missing parameter #TYPE"),
        (lambda t: t.replace("#EXPOSURE_TIME=120", "#EXPOSURE_TIME=900"), "at most 600"),
        (lambda t: t.replace("#DELIM=,", "#DELIM=#"), "is not one of"),
        (lambda t: t.replace("#BINNING=1x1", "#BINNING=5x5"), "#BINNING"),
        (lambda t: t.replace("#DATE_TYPE=BJD_TDB", "#DATE_TYPE=MJD"), "#DATE_TYPE"),
        (lambda t: t.replace("#OBSCODE=TST01", "#OBSCODE=TOOLONG"), "at most 5"),
        (
            lambda t: re.sub(r"\n(\d+\.\d+),(\d+\.\d+),", r"\n\1,\g<2>123,", t, count=1),
            "decimal(15,8)",
        ),
        (
            lambda t: t.replace("#MEASUREMENT_TYPE=Rnflux", "#MEASUREMENT_TYPE=flux"),
            "Rnflux or Dmag",
        ),
    ],
)
def test_aavso_exoplanet_validator_catches(small_run, edit, complaint):
    run_dir, _ = small_run
    text = (run_dir / "exports" / "aavso_exoplanet_T1.txt").read_text()
    problems = aavso.validate_exoplanet(edit(text))
    assert any(complaint in p for p in problems), problems


def test_filter_codes():
    assert aavso.filter_code(None, ["V", "V"]) == "V"
    assert aavso.filter_code(None, ["Rc"]) == "R"
    assert aavso.filter_code(None, ["Clear"]) == "CV"
    assert aavso.filter_code(None, ["r'"]) == "SR"
    assert aavso.filter_code("tg", ["whatever"]) == "TG"
    with pytest.raises(aavso.ExportError, match="several filters"):
        aavso.filter_code(None, ["V", "B"])
    with pytest.raises(aavso.ExportError, match="no FILTER keyword"):
        aavso.filter_code(None, ["", ""])
    with pytest.raises(aavso.ExportError, match="not an AAVSO filter code"):
        aavso.filter_code("Q", [])


def test_aavso_export_needs_an_observer_code_before_any_work(small_night, tmp_path):
    base, truth = small_night
    settings = demo.settings_for(
        base / "night", tmp_path / "out", truth, quiet=True, exports=["aavso-extended"]
    )
    with pytest.raises(SettingsError, match="observer code"):
        pipeline.run(settings)
    assert not (tmp_path / "out" / "results.ecsv").exists()


def test_export_command(small_run, tmp_path, capsys):
    run_dir, _ = small_run
    rc = cli.main(["export", str(run_dir), "--format", "aavso-extended", "--format", "csv",
                   "--out", str(tmp_path), "--observer-code", "ABC"])  # fmt: skip
    assert rc == 0
    text = (tmp_path / "aavso_extended.txt").read_text()
    assert "#OBSCODE=ABC" in text and aavso.validate_extended(text) == []
    assert (tmp_path / "results.csv").exists()
    assert str(tmp_path / "aavso_extended.txt") in capsys.readouterr().out
    rc = cli.main(["export", str(tmp_path), "--format", "csv"])
    assert rc == 2
    assert "not a tsphot run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- AstroImageJ


def test_aij_measurements_table(small_run):
    run_dir, _ = small_run
    t = aij.read_measurements(run_dir / "exports" / "measurements_aij.tbl")
    lines = (run_dir / "exports" / "measurements_aij.tbl").read_text().splitlines()
    assert lines[0].split("\t")[:4] == [" ", "Label", "slice", "J.D.-2400000"]
    for col in ("rel_flux_T1", "rel_flux_err_T1", "BJD_TDB", "AIRMASS", "FWHM_Mean",
                "Sky/Pixel_T1", "rel_flux_T2", "Source-Sky_T1", "X(FITS)_T1", "Y(IJ)_T1",
                "tot_C_cnts", "rel_flux_C3"):  # fmt: skip
        assert col in t.colnames, col
    products = export.load_products(run_dir)
    res = products.results
    rec = products.record
    assert np.all(np.diff(t["slice"]) == 1) and t["slice"][0] == 1
    lc = products.curves["T1"]
    np.testing.assert_array_equal(t["BJD_TDB"], _values(lc["BJD_TDB"]))
    np.testing.assert_array_equal(t["tsphot_rel_flux_T1"], _values(lc["rel_flux"]))
    # AstroImageJ's relative flux: net counts over the kept comparison stars' total
    gain = rec["gain_e_per_adu"]
    t1 = res[res["object"] == "T1"]
    np.testing.assert_allclose(t["Source-Sky_T1"], _values(t1["flux"]) / gain, rtol=1e-12)
    ok = np.isfinite(t["tot_C_cnts"])
    assert ok.sum() >= len(t) - 2
    np.testing.assert_allclose(
        t["rel_flux_T1"][ok], (t["Source-Sky_T1"] / t["tot_C_cnts"])[ok], rtol=1e-12
    )
    used = [c["name"] for c in rec["comparison_stars"] if c["used"]]
    total = sum(_values(res[res["object"] == n]["flux"]) for n in used) / gain
    np.testing.assert_allclose(t["tot_C_cnts"][ok], total[ok], rtol=1e-9)
    # pixel conventions: FITS is 1-based; ImageJ has y down from the top row
    height = rec["image_shape"][0]
    np.testing.assert_allclose(t["X(FITS)_T1"], _values(t1["x"]) + 1)
    np.testing.assert_allclose(t["Y(IJ)_T1"], height - _values(t1["y"]) - 0.5)


def test_aij_apertures_and_radec_round_trip(small_run):
    run_dir, _ = small_run
    rec = export.load_products(run_dir).record
    height = rec["image_shape"][0]
    ap = aij.read_apertures(run_dir / "exports" / "tsphot.apertures", height)
    objs = export._objects_for_aij(export.load_products(run_dir))
    assert [o["name"] for o in ap["objects"]] == aij.aperture_names([o["role"] for o in objs])
    for a, o in zip(ap["objects"], objs, strict=True):
        assert a["role"] == ("comp" if o["role"] == "comp" else "target")
        assert a["x"] == pytest.approx(o["x"], abs=1e-4) and a["y"] == pytest.approx(
            o["y"], abs=1e-4
        )
        assert a["ra"] == pytest.approx(o["ra"], abs=1e-8)
    assert ap["aperture"] == rec["apertures"]["chosen_radius_px"]
    assert list(ap["annulus"]) == rec["apertures"]["annulus_px"]
    rd = aij.read_radec(run_dir / "exports" / "tsphot.radec")
    for a, o in zip(rd, objs, strict=True):
        assert a["ra"] == pytest.approx(o["ra"], abs=0.001 * 15 / 3600)  # 1 ms of RA
        assert a["dec"] == pytest.approx(o["dec"], abs=0.01 / 3600)
        assert a["role"] == ("comp" if o["role"] == "comp" else "target")


AIJ_APERTURES = """#AstroImageJ Saved Apertures
#Sat Jun 22 22:19:34 EDT 2013
.multiaperture.naperturesmax=500
.multiaperture.isrefstar=false,true,true
.multiaperture.xapertures=100.5,20.25,50.0
.multiaperture.yapertures=155.5,36.75,100.0
.multiaperture.absmagapertures=99.999,12.5,99.999
.aperture.radius=6.0
.aperture.rback1=12.0
.aperture.rback2=20.0
"""

AIJ_RADEC = """#RA in decimal or sexagesimal HOURS
#Dec in decimal or sexagesimal DEGREES
#Ref Star=0,1,missing (0=target star, 1=ref star, missing->first ap=target, others=ref)
#RA, Dec, Ref Star, Centroid, Magnitude
02:04:10.200, +46:41:16.10, 0, 1, 99.999
2.07, -0.5, 1, 1, 11.25
02:04:00, +46:40:00
"""


def test_aij_files_as_astroimagej_writes_them(tmp_path):
    p = tmp_path / "a.apertures"
    p.write_text(AIJ_APERTURES)
    ap = aij.read_apertures(p, height=256)
    assert [(o["name"], o["role"]) for o in ap["objects"]] == [
        ("T1", "target"), ("C2", "comp"), ("C3", "comp"),
    ]  # fmt: skip
    assert ap["objects"][0]["x"] == 100.0 and ap["objects"][0]["y"] == 256 - 155.5 - 0.5
    assert ap["objects"][1]["mag"] == 12.5 and ap["objects"][0]["mag"] is None
    assert ap["aperture"] == 6.0 and ap["annulus"] == (12.0, 20.0)
    # scripts write FITS coordinates behind a 'FITS' prefix: 1-based, y up
    p.write_text(".multiaperture.xapertures=FITS101.0,21\n.multiaperture.yapertures=FITS10,5\n")
    ap = aij.read_apertures(p, height=256)
    assert [(o["x"], o["y"], o["role"]) for o in ap["objects"]] == [
        (100.0, 9.0, "target"), (20.0, 4.0, "comp"),
    ]  # fmt: skip
    r = tmp_path / "a.radec"
    r.write_text(AIJ_RADEC)
    rd = aij.read_radec(r)
    assert rd[0]["ra"] == pytest.approx(15 * (2 + 4 / 60 + 10.2 / 3600))
    assert rd[0]["dec"] == pytest.approx(46 + 41 / 60 + 16.1 / 3600)
    assert rd[1]["ra"] == pytest.approx(2.07 * 15) and rd[1]["dec"] == -0.5
    assert rd[1]["mag"] == 11.25 and rd[1]["role"] == "comp"
    assert rd[2]["role"] == "comp" and rd[2]["name"] == "C3"  # flag missing: not the first
    bad = tmp_path / "bad.apertures"
    bad.write_text("#nothing here\n")
    with pytest.raises(SettingsError, match="not an AstroImageJ apertures file"):
        aij.read_apertures(bad, 256)


def test_run_from_astroimagej_apertures(small_run, small_night, tmp_path):
    """An apertures file exported by one run is the input of the next: same objects, same
    numbers."""
    run_dir, _ = small_run
    base, truth = small_night
    settings = demo.settings_for(base / "night", tmp_path / "out", truth, quiet=True,
                                 executor="serial")  # fmt: skip
    settings.targets, settings.checks = [], []
    settings.aperture, settings.annulus = None, None
    settings.aij_apertures = str(run_dir / "exports" / "tsphot.apertures")
    summary = pipeline.run(settings)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    first = json.loads((run_dir / "run.json").read_text())
    assert record["aij_import"]["objects"][:2] == ["T1", "T2"]
    assert record["settings"]["aij_apertures"] is None  # resolved into objects: replayable
    assert record["apertures"]["chosen_radius_px"] == first["apertures"]["chosen_radius_px"]
    assert record["apertures"]["annulus_px"] == first["apertures"]["annulus_px"]
    # T1 of the AIJ file is the first run's target, at the same place
    assert record["objects"]["T1"]["x"] == pytest.approx(first["objects"]["T1"]["x"], abs=0.05)
    comps = [c["name"] for c in record["comparison_stars"]]
    assert comps and all(re.fullmatch(r"C\d+", n) for n in comps)
    assert summary["frames_ok"] == 30


def test_aij_names_cannot_clash(small_night, tmp_path):
    base, truth = small_night
    p = tmp_path / "a.apertures"
    p.write_text(AIJ_APERTURES)
    settings = demo.settings_for(base / "night", tmp_path / "out", truth, quiet=True)
    settings.targets = [ObjectSpec(name="T1", x=10, y=10)]
    settings.aij_apertures = str(p)
    with pytest.raises(SettingsError, match="AstroImageJ aperture T1"):
        pipeline.run(settings)


def test_pictures_and_report(small_run):
    run_dir, summary = small_run
    for stem in ("lightcurve", "conditions", "finder", "noise_budget"):
        for suffix in (".png", ".pdf"):
            f = run_dir / f"{stem}{suffix}"
            assert f.exists() and f.stat().st_size > 5000, f
        assert (run_dir / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run_dir / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert not re.search(r"""src=["'](?!data:)""", html)  # self-contained: no outside files
    assert "Comparison stars" in html and "T1" in html and "CHK" in html
    assert "Settings" in html and "Versions" in html
    assert len(summary["pictures"]) == 8


def test_results_units_kept(small_run):
    run_dir, _ = small_run
    t = QTable.read(run_dir / "results.ecsv")
    assert str(t["flux"].unit) == "electron" and str(t["x"].unit) == "pix"


def test_an_export_that_cannot_be_written_does_not_lose_the_run(small_night, tmp_path):
    base, truth = small_night
    settings = demo.settings_for(
        base / "night",
        tmp_path / "out",
        truth,
        quiet=True,
        exports=["aavso-extended", "csv"],
        observer_code=OBSCODE,
    )
    long_name = "A-target-name-longer-than-thirty-characters"
    settings.targets = [settings.targets[0].model_copy(update={"name": long_name})]
    summary = pipeline.run(settings)
    assert "30 characters of STARID" in summary["export_errors"]["aavso-extended"]
    out = tmp_path / "out"
    assert (out / "exports" / "results.csv").exists()
    assert not (out / "exports" / "aavso_extended.txt").exists()
    record = json.loads((out / "run.json").read_text())
    assert record["export_errors"] == summary["export_errors"]
    from tsphot import records

    assert records.RunRecords.read(out / "records.json").tool.status == "done"


def test_run_from_an_astroimagej_radec_file_on_the_command_line(small_run, small_night, tmp_path):
    """Sky positions from a radec file, placed through the frames' WCS; names as AIJ's."""
    run_dir, _ = small_run
    base, _ = small_night
    toml = (base / "night" / "tsphot.toml").read_text().split("[[targets]]")[0]
    toml = toml.replace('"raw/', f'"{base / "night" / "raw"}/')
    (tmp_path / "run.toml").write_text(toml)
    out = tmp_path / "out"
    rc = cli.main(["run", "--config", str(tmp_path / "run.toml"), "--out", str(out),
                   "--aij-radec", str(run_dir / "exports" / "tsphot.radec"),
                   "--executor", "serial", "--quiet"])  # fmt: skip
    assert rc == 0
    first = json.loads((run_dir / "run.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert record["aij_import"]["files"][0]["path"].endswith("tsphot.radec")
    # AIJ's names: the target T1, the check star (not a reference star there) T2, C3, …
    assert record["objects"]["T1"]["role"] == "target"
    assert record["objects"]["T2"]["role"] == "target"
    assert all(o["ra"] is not None and o["x"] is None for o in record["settings"]["targets"])
    # placed through the WCS, the file's T1 is the first run's T1 and T2 its check star
    for name, was in (("T1", "T1"), ("T2", "CHK")):
        o, src = record["objects"][name], first["objects"][was]
        assert o["x"] == pytest.approx(src["x"], abs=0.1) and o["y"] == pytest.approx(
            src["y"], abs=0.1
        )
    assert len(record["comparison_stars"]) == len(first["comparison_stars"])


@pytest.mark.parametrize("rows", [1, 3, 4, 1000])
def test_ecsv_written_in_blocks_is_byte_identical(tmp_path, rows):
    # a long night's results.ecsv is written a block of rows at a time; the bytes must be those
    # astropy writes in one go (units, metadata, strings with spaces and quotes, NaN)
    from astropy import units as u

    t = QTable()
    t["object"] = ["T1", "C 2", 'say "hi"', "", "#3", "é", "x", "y", "z", "T1"]
    t["flux"] = np.array([1.5, np.nan, -2e-12, 3.0, 1e300, 0.1, 0.2, 0.3, 0.4, 0.5]) * u.electron
    t["ok"] = np.arange(10) % 3 == 0
    t["frame"] = np.arange(10)
    t.meta["description"] = "per-object photometry\nwith a second line"
    t.write(tmp_path / "whole.ecsv", format="ascii.ecsv")
    export.write_ecsv_in_blocks(t, tmp_path / "blocks.ecsv", rows)
    assert (tmp_path / "blocks.ecsv").read_bytes() == (tmp_path / "whole.ecsv").read_bytes()
    export.write_ecsv_in_blocks(t[:0], tmp_path / "empty.ecsv", rows)
    t[:0].write(tmp_path / "empty_whole.ecsv", format="ascii.ecsv")
    assert (tmp_path / "empty.ecsv").read_bytes() == (tmp_path / "empty_whole.ecsv").read_bytes()


def test_fast_ecsv_body_matches_astropy_for_every_column_kind(tmp_path):
    # the column-at-a-time writer must give astropy's bytes for each kind of column tsphot
    # writes, and hand back (None) the kinds it does not format itself
    from astropy.table import MaskedColumn

    rng = np.random.default_rng(5)
    n = 400
    t = QTable()
    t["f64"] = rng.normal(0, 1, n) * 10.0 ** rng.integers(-30, 30, n)
    t["f64"][:6] = [np.nan, np.inf, -np.inf, -0.0, 1e16, 1e-5]
    t["f32"] = (rng.normal(0, 1, n) * 10.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    t["i64"] = rng.integers(-(2**40), 2**40, n)
    t["u16"] = rng.integers(0, 2**16, n).astype(np.uint16)
    t["flag"] = rng.random(n) > 0.5
    words = ["ok", "", " lead", "trail\t", 'q "x"', "a b", "line\nbreak", "é", "#", ","]
    t["text"] = [words[i % len(words)] for i in range(n)]
    t["mag"] = rng.normal(12, 1, n) * u.mag
    t.write(tmp_path / "astropy.ecsv", format="ascii.ecsv")
    export.write_ecsv_in_blocks(t, tmp_path / "fast.ecsv", 128)
    assert export.ecsv_body(t) is not None
    assert (tmp_path / "fast.ecsv").read_bytes() == (tmp_path / "astropy.ecsv").read_bytes()
    back = QTable.read(tmp_path / "fast.ecsv", format="ascii.ecsv")
    np.testing.assert_array_equal(back["f64"], t["f64"])
    np.testing.assert_array_equal(back["f32"], t["f32"])
    # multidimensional and masked columns are left to astropy, with the same bytes
    t2 = Table({"x": np.arange(6.0)})
    t2["pair"] = np.arange(12.0).reshape(6, 2)
    t2["m"] = MaskedColumn([1.0, 2, 3, 4, 5, 6], mask=[0, 1, 0, 0, 1, 0])
    assert export.ecsv_body(t2) is None
    t2.write(tmp_path / "astropy2.ecsv", format="ascii.ecsv")
    export.write_ecsv_in_blocks(t2, tmp_path / "fast2.ecsv", 4)
    assert (tmp_path / "fast2.ecsv").read_bytes() == (tmp_path / "astropy2.ecsv").read_bytes()
