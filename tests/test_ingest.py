"""Ingest: header normalisation per camera convention, ordering, and bad files named."""

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
