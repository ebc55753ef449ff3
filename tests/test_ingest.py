"""Ingest: header normalisation per camera convention, ordering, and bad files named."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tsphot import ingest
from tsphot.errors import InputError


def _write(path, header_cards, shape=(20, 30), data=None):
    h = fits.Header()
    for k, v in header_cards.items():
        h[k] = v
    arr = np.zeros(shape, np.uint16) if data is None else data
    fits.PrimaryHDU(arr, header=h).writeto(path)
    return str(path)


def test_microobservatory_header(tmp_path):
    """Local DATE-OBS with offset, unsigned west LONGITUD, no gain: as MicroObservatory writes."""
    p = _write(
        tmp_path / "m.fits",
        {
            "DATE-OBS": "2017-12-19T18:33:43.317-0700",
            "EXPTIME": 60.0,
            "LATITUDE": 31.68,
            "LONGITUD": 110.88,
            "CREATOR": "MicroObservatory2014-05-23",
            "RA": 31.312099,
            "DEC": 46.769087,
        },
    )
    info = ingest.read_header(p)
    assert info.status == "ok"
    assert info.profile == "microobservatory"
    # reference_times.csv of the HAT-P-32 set: 2458107.565431910 for this very header
    assert info.jd_utc_mid == pytest.approx(2458107.565431910, abs=1e-8)
    assert info.site == pytest.approx((31.68, -110.88, 0.0))
    assert info.gain is None
    assert info.saturation == 4095.0
    assert any("saturation" in a for a in info.assumed)


def test_theskyx_header(tmp_path):
    """TheSkyX/SBIG: EGAIN, positive-west sexagesimal SITELONG, PEDESTAL."""
    p = _write(
        tmp_path / "s.fits",
        {
            "DATE-OBS": "2018-10-13T02:03:10.984",
            "EXPTIME": 180.0,
            "EGAIN": 2.07,
            "SITELAT": "+42 36 36.00",
            "SITELONG": "+71 29 06.00",
            "PEDESTAL": -100,
            "SWCREATE": "TheSkyX Professional Edition",
            "IMAGETYP": "Light Frame",
            "OBJCTRA": "04 12 12.262",
            "OBJCTDEC": "+22 53 01.76",
        },
    )
    info = ingest.read_header(p)
    assert info.profile == "theskyx"
    assert info.gain == 2.07
    assert info.pedestal == -100
    assert info.site[0] == pytest.approx(42.61, abs=1e-3)
    assert info.site[1] == pytest.approx(-71.485, abs=1e-3)
    assert info.ra_dec[0] == pytest.approx(15 * (4 + 12 / 60 + 12.262 / 3600), abs=1e-6)
    data, _ = ingest.read_pixels(p, info.pedestal)
    assert float(data[0, 0]) == -100.0  # stored 0 + PEDESTAL


def test_nina_header(tmp_path):
    """N.I.N.A./ASCOM: decimal east-positive SITELONG, GAIN and RDNOISE."""
    p = _write(
        tmp_path / "n.fits",
        {
            "DATE-OBS": "2024-03-01T01:00:00.000",
            "EXPOSURE": 30.0,
            "GAIN": 1.6,
            "RDNOISE": 9.0,
            "SITELAT": 31.68,
            "SITELONG": -110.88,
            "SITEELEV": 2300.0,
        },
    )
    info = ingest.read_header(p)
    assert info.profile == "generic"
    assert (info.gain, info.read_noise, info.exptime) == (1.6, 9.0, 30.0)
    assert info.site == (31.68, -110.88, 2300.0)
    assert info.jd_utc_mid == pytest.approx(2460370.5 + (3600 + 15) / 86400, abs=1e-9)


def test_bad_files_get_status_and_reason(tmp_path):
    good = _write(tmp_path / "a.fits", {"DATE-OBS": "2020-01-01T00:00:00", "EXPTIME": 10.0})
    later = _write(tmp_path / "b.fits", {"DATE-OBS": "2020-01-01T00:01:00", "EXPTIME": 10.0})
    early = _write(tmp_path / "c.fits", {"DATE-OBS": "2019-12-31T23:59:00", "EXPTIME": 10.0})
    hdr = {"DATE-OBS": "2020-01-01T00:02:00", "EXPTIME": 10.0}
    big = _write(tmp_path / "d.fits", hdr, (40, 40))
    dup = _write(tmp_path / "e.fits", {"DATE-OBS": "2020-01-01T00:01:00", "EXPTIME": 10.0})
    nodate = _write(tmp_path / "f.fits", {"EXPTIME": 10.0})
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file")
    missing = str(tmp_path / "x.fits")
    infos = ingest.ingest([later, str(text), good, big, nodate, early, dup, missing])
    by = {i.path: i for i in infos}
    assert [i.path for i in infos[:3]] == [early, good, later]  # sorted by time, not by name
    assert by[big].status == "bad_size" and "30x20" in by[big].reason
    assert by[dup].status == "duplicate" and "b.fits" in by[dup].reason
    assert by[nodate].status == "bad_header" and "DATE-OBS" in by[nodate].reason
    assert by[str(text)].status == "bad_file" and "notes.fits" in by[str(text)].reason
    assert by[str(tmp_path / "x.fits")].status == "missing"
    assert len(infos) == 8  # nothing dropped


def test_expand_inputs(tmp_path):
    for n in ("a.fits", "b.fit", "c.fits.gz", "d.txt"):
        (tmp_path / n).write_bytes(b"")
    got = ingest.expand_inputs([str(tmp_path)])
    assert [p.split("/")[-1] for p in got] == ["a.fits", "b.fit", "c.fits.gz"]
    assert ingest.expand_inputs([str(tmp_path / "*.fit")]) == [str(tmp_path / "b.fit")]
    with pytest.raises(InputError, match="matches no file"):
        ingest.expand_inputs([str(tmp_path / "*.xyz")])


def test_maxim_dl_header(tmp_path):
    """MaxIm DL (ASCOM): EGAIN, DATAMAX, sexagesimal SITELONG east-positive, 'Flat Frame'."""
    p = _write(
        tmp_path / "mx.fits",
        {
            "SWCREATE": "MaxIm DL Version 6.16 171024 1ADS1",
            "IMAGETYP": "Flat Frame",
            "DATE-OBS": "2019-05-04T03:12:45.12",
            "EXPTIME": 2.5,
            "EXPOSURE": 2.5,
            "EGAIN": 1.35,
            "DATAMAX": 60000,
            "CCD-TEMP": -24.8,
            "SET-TEMP": -25.0,
            "XBINNING": 2,
            "YBINNING": 2,
            "FILTER": "V",
            "SITELAT": "+31 40 48",
            "SITELONG": "-110 52 48",
            "PEDESTAL": 0,
        },
    )
    info = ingest.read_header(p)
    assert info.profile == "maxim"
    assert info.kind == "flat"
    assert (info.gain, info.saturation, info.binning) == (1.35, 60000.0, (2, 2))
    assert info.ccd_temp == -25.0  # the set point groups frames better than the measured one
    assert info.site[:2] == pytest.approx((31.68, -110.88), abs=1e-6)
    assert info.jd_utc_mid == pytest.approx(
        2458607.5 + (3 * 3600 + 12 * 60 + 46.37) / 86400, abs=1e-9
    )


def test_sbig_ccdops_header(tmp_path):
    """SBIG CCDOps: date and time in two keywords, PICTTYPE but no IMAGETYP, EGAIN, PEDESTAL."""
    p = _write(
        tmp_path / "sb.fits",
        {
            "SWCREATE": "SBIG CCDOps Version 5.55 NE",
            "DATE-OBS": "2005-03-11",
            "TIME-OBS": "04:05:06.00",
            "EXPTIME": 120.0,
            "PICTTYPE": 3,
            "EGAIN": 2.3,
            "PEDESTAL": -100,
            "CCD-TEMP": -15.2,
            "XBINNING": 1,
            "YBINNING": 1,
        },
        data=np.full((20, 30), 1100, np.uint16),
    )
    info = ingest.read_header(p)
    assert info.profile == "sbig"
    assert info.kind == "dark"
    assert info.gain == 2.3 and info.ccd_temp == -15.2
    assert info.jd_utc_mid == pytest.approx(2453440.5 + (4 * 3600 + 5 * 60 + 66) / 86400, abs=1e-9)
    data, _ = ingest.read_pixels(p, info.pedestal)
    assert float(data[0, 0]) == 1000.0


def test_nina_camera_gain_setting_is_not_electrons_per_adu(tmp_path):
    """N.I.N.A. writes GAIN as the camera's gain setting (139) and EGAIN as e-/ADU."""
    cards = {
        "SWCREATE": "N.I.N.A. 2.1.0.9001 (x64)",
        "IMAGETYP": "LIGHT",
        "EXPOSURE": 30.0,
        "EXPTIME": 30.0,
        "DATE-LOC": "2024-03-01T02:00:00.000",
        "DATE-OBS": "2024-03-01T09:00:00.000",
        "GAIN": 139,
        "OFFSET": 21,
        "EGAIN": 0.25,
        "CCD-TEMP": -10.1,
        "SET-TEMP": -10.0,
        "SITELAT": 31.68,
        "SITELONG": -110.88,
        "SITEELEV": 2300.0,
    }
    info = ingest.read_header(_write(tmp_path / "n1.fits", cards))
    assert info.profile == "nina"
    assert info.kind == "light"
    assert info.gain == 0.25
    assert info.jd_utc_mid == pytest.approx(2460370.5 + (9 * 3600 + 15) / 86400, abs=1e-9)
    assert info.site == (31.68, -110.88, 2300.0)
    del cards["EGAIN"]
    info = ingest.read_header(_write(tmp_path / "n2.fits", cards))
    assert info.gain is None  # never 139 e-/ADU


def test_profile_can_be_forced(tmp_path):
    """A header without a creator keyword read with a named profile (positive-west longitude)."""
    p = _write(
        tmp_path / "f.fits",
        {"DATE-OBS": "2020-01-01T00:00:00", "EXPTIME": 1.0, "SITELAT": 42.61, "SITELONG": 71.485},
    )
    assert ingest.read_header(p).site[1] == pytest.approx(71.485)
    assert ingest.read_header(p, {"profile": "theskyx"}).site[1] == pytest.approx(-71.485)


@pytest.mark.parametrize(
    ("imagetyp", "picttype", "kind"),
    [
        ("Bias Frame", None, "bias"),
        ("BIAS", None, "bias"),
        ("Zero", None, "bias"),
        ("zero", None, "bias"),
        ("Dark Frame", None, "dark"),
        ("DARK", None, "dark"),
        ("Flat Field", None, "flat"),
        ("Flat Frame", None, "flat"),
        ("FLAT", None, "flat"),
        ("SKYFLAT", None, "flat"),
        ("DARKFLAT", None, "darkflat"),
        ("Light Frame", None, "light"),
        ("LIGHT", None, "light"),
        ("object", None, "light"),
        ("", 2, "bias"),
        ("", 4, "flat"),
        ("", None, ""),
        ("focus", None, ""),
    ],
)
def test_frame_kind_variants(imagetyp, picttype, kind):
    assert ingest.frame_kind(imagetyp, picttype) == kind


WALLACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "asteroid2713-wallace"


@pytest.mark.realdata
@pytest.mark.skipif(not WALLACE.is_dir(), reason=f"real data not present at {WALLACE}")
def test_real_wallace_header_profile():
    """The real TheSkyX headers of the Wallace nights: kind, PEDESTAL, gain, west longitude."""
    root = WALLACE
    bias = next(root.glob("20181012p3/*Bias*.fits.gz"))
    dark = next(root.glob("20181017p3/*Dark*.fits.gz"))
    light = next(root.glob("20181012p3/*Light*.fits.gz"))
    b, d, li = (ingest.read_header(str(p)) for p in (bias, dark, light))
    assert (b.kind, d.kind, li.kind) == ("bias", "dark", "light")
    assert b.profile == "theskyx" and b.exptime == 0.0  # named "180.000secs" but EXPTIME 0
    assert d.exptime == 240.0 and li.exptime == 180.0
    assert b.pedestal == -100 and b.gain == 2.07
    assert li.site[0] == pytest.approx(42.61, abs=1e-3)
    assert li.site[1] == pytest.approx(-71.485, abs=1e-3)  # SITELONG +71 29 06 is west
    assert li.ccd_temp == pytest.approx(-20.2, abs=0.05)  # SET-TEMP


@pytest.mark.parametrize(
    "dtype, bzero, bscale, plain",
    [
        (np.uint16, None, None, True),  # BITPIX 16, BZERO 32768: most cameras
        (np.int16, None, None, True),
        (np.uint8, None, None, True),
        (np.int32, None, None, True),
        (np.float32, None, None, True),
        (np.float64, None, None, True),
        (np.int16, 100.0, None, False),  # other scalings: astropy reads them
        (np.int16, None, 2.0, False),
        (np.uint32, None, None, False),  # BZERO 2**31
    ],
)
def test_plain_image_reads_what_astropy_reads(tmp_path, dtype, bzero, bscale, plain):
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (info.min, info.max) if info else (-1e6, 1e6)
    data = rng.uniform(lo, hi, (37, 53)).astype(dtype)
    data[0, :3] = [lo, hi, 0] if info else [0.5, -2.25, 1e-3]  # the extremes survive
    hdu = fits.PrimaryHDU(data)
    if bzero is not None or bscale is not None:
        hdu.scale("int16", bzero=bzero or 0.0, bscale=bscale or 1.0)
    hdu.header["EXPTIME"] = 10.0
    path = tmp_path / "f.fits"
    hdu.writeto(path)
    blob = path.read_bytes()
    fast = ingest.plain_image(blob)
    with fits.open(path) as hdul:
        slow = np.asarray(hdul[0].data, np.float32)
    if not plain:
        assert fast is None
    else:
        assert fast is not None and fast.dtype == np.float32
        np.testing.assert_array_equal(fast, slow)
    # the pipeline's reader gives the same pixels, header or not
    a, _, sha_a = ingest.read_pixels_sha256(str(path), 3.0, header=False)
    b, hdr, sha_b = ingest.read_pixels_sha256(str(path), 3.0)
    np.testing.assert_array_equal(a, b)
    assert sha_a == sha_b and hdr["EXPTIME"] == 10.0


def test_plain_image_leaves_truncated_and_odd_files_to_astropy(tmp_path):
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(np.ones((40, 40), np.uint16)).writeto(path)
    blob = path.read_bytes()
    assert ingest.plain_image(blob) is not None
    assert ingest.plain_image(blob[: 2880 + 3000]) is None  # truncated inside the pixels
    cube = tmp_path / "c.fits"
    fits.PrimaryHDU(np.ones((2, 40, 40), np.uint16)).writeto(cube)
    assert ingest.plain_image(cube.read_bytes()) is None
    ext = tmp_path / "e.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((40, 40), np.float32))]).writeto(ext)
    assert ingest.plain_image(ext.read_bytes()) is None  # NAXIS 0 in the primary
    with pytest.raises(InputError, match="truncated"):
        (tmp_path / "t.fits").write_bytes(blob[: len(blob) // 2])
        ingest.read_pixels_sha256(str(tmp_path / "t.fits"), header=False)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _same_values(fast, header):
    """Every keyword the fast parser read has astropy's value, of astropy's type."""
    for key, value in fast.items():
        ref = header[key]
        assert type(value) is type(ref), key
        assert value == ref or (value != value and ref != ref), key


def test_fast_header_parser_agrees_with_astropy_on_the_real_nights():
    # every header of the real nights (gzip-compressed: decompressed here; the fast path
    # itself leaves compressed files to astropy) parses to astropy's values
    import gzip

    paths = sorted(SHARED.rglob("*.fits.gz"))
    if not paths:
        pytest.skip(f"real nights not found under {SHARED}")
    parsed = 0
    for p in paths:
        blob = gzip.decompress(p.read_bytes())
        got = ingest.parse_header(blob)
        header = fits.Header.fromstring(blob[: blob.index(b"END" + b" " * 77) + 80].decode())
        if got is None:
            continue
        fast, offset = got
        assert offset % 2880 == 0 and offset > blob.index(b"END" + b" " * 77)
        _same_values(fast, header)
        assert set(fast) == {k for k in header if k not in ("COMMENT", "HISTORY", "")}
        parsed += 1
    assert parsed >= 0.9 * len(paths)  # odd headers may go to astropy, but not most


def test_fast_header_parser_card_values(tmp_path):
    # strings with quotes, blanks and slashes; logicals; integers; floats with D exponents;
    # lower-case lookups; duplicates (the first counts); what it leaves to astropy
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                   16",
        "NAXIS   =                    2",
        "NAXIS1  =                    4",
        "NAXIS2  =                    3",
        "OBJECT  = 'HAT-P-32 b / x' / comment with 'quotes'",
        "OBSERVER= 'O''Brien  '",
        "EMPTY   = ''",
        "BLANKS  = '   '",
        "LEAD    = '  lead'",
        "FLAG    =                    F / no",
        "EXPTIME =                 60.5",
        "DEXP    =              1.5D+02",
        "SMALL   =               -3E-05",
        "BIG     =          12345678901",
        "PLUS    =                   +7",
        "DOT     =                   5.",
        "EXPTIME =                  1.0 / a duplicate: astropy returns the first",
        "COMMENT   a comment card = 'not a value'",
        "HISTORY   history",
        "",
        "END",
    ]
    blob = "".join(c.ljust(80) for c in cards).ljust(2880).encode("ascii")
    fast, offset = ingest.parse_header(blob)
    assert offset == 2880
    header = fits.Header.fromstring(blob.decode())
    _same_values(fast, header)
    assert fast["object"] == "HAT-P-32 b / x" and fast["OBSERVER"] == "O'Brien"
    assert fast["EXPTIME"] == 60.5 and "exptime" in fast and fast.get("NOPE", 3) == 3
    assert fast["DEXP"] == 150.0 and fast["FLAG"] is False and fast["BIG"] == 12345678901
    for odd in (
        "CONTINUE  'def'",  # the rest of a long string
        "HIERARCH ESO DET CHIP = 3",
        "CPLX    = (1.0, 2.0)",
        "UNDEF   =",
        "BROKEN  = 'no closing quote",
    ):
        bad = "".join(c.ljust(80) for c in [*cards[:5], odd, "END"]).ljust(2880).encode()
        assert ingest.parse_header(bad) is None, odd


def test_read_header_fast_path_gives_astropy_path_result(tmp_path, monkeypatch):
    # the same FrameInfo whether the header was parsed here or by astropy
    from dataclasses import asdict

    paths = [
        _write(
            tmp_path / f"f{i}.fits",
            {
                "DATE-OBS": f"2024-05-01T03:0{i}:05.6",
                "EXPTIME": 30.0 + i,
                "GAIN": 1.4,
                "RDNOISE": 9.0,
                "FILTER": "V ",
                "IMAGETYP": "Light Frame",
                "SITELAT": "31 40 48",
                "SITELONG": "-110 52 48",
                "OBJCTRA": "02 04 10.3",
                "OBJCTDEC": "+46 41 16",
                "SWCREATE": "MaxIm DL Version 6.20",
                "XBINNING": 2,
                "YBINNING": 2,
                "CCD-TEMP": -20.5,
            },
        )
        for i in range(3)
    ]
    fast = [asdict(ingest.read_header(p)) for p in paths]
    assert ingest._fast_image_header(paths[0]) is not None  # the fast path was taken
    monkeypatch.setattr(ingest, "_fast_image_header", lambda path: None)
    slow = [asdict(ingest.read_header(p)) for p in paths]
    assert fast == slow
    assert fast[0]["status"] == "ok" and fast[0]["binning"] == (2, 2)


def test_read_headers_equals_read_header_one_by_one(tmp_path):
    # times converted in one batch give each frame's own result; a bad time still names its file
    from dataclasses import asdict

    paths = [
        _write(tmp_path / f"f{i}.fits", {"DATE-OBS": f"2024-05-01T03:{i:02d}:05.{i}", "EXPTIME": i})
        for i in range(1, 6)
    ]
    paths.append(_write(tmp_path / "local.fits", {"DATE-OBS": "2017-12-19T18:33:43.317-0700",
                                                  "EXPTIME": 60.0,
                                                  "CREATOR": "MicroObservatory2014"}))  # fmt: skip
    paths.append(_write(tmp_path / "bad.fits", {"DATE-OBS": "2024-13-45T99:00:00", "EXPTIME": 1}))
    paths.append(str(tmp_path / "missing.fits"))
    seen = []
    batch = ingest.read_headers(paths, progress=seen.append)
    assert seen == paths
    assert [asdict(i) for i in batch] == [asdict(ingest.read_header(p)) for p in paths]
    assert batch[-2].status == "bad_header" and "bad.fits" in batch[-2].reason
    assert batch[0].status == "ok" and np.isfinite(batch[0].jd_utc_mid)
