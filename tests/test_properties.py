"""Property-based tests (hypothesis): header parsing, time conversion, photometry invariants."""

import math
import string
from datetime import datetime, timedelta

import numpy as np
import pytest
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time, TimeDelta
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.special import erf

from tsphot import ensemble, ingest, measure, timing

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECOND_D = 1.0 / 86400.0
JD_TOL = 2e-9  # d (0.17 ms): a float64 JD near 2.45e6 resolves 4.7e-10 d (40 µs)

instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2024, 12, 31))
exptimes = st.floats(min_value=0.001, max_value=3600.0, allow_nan=False)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]  # milliseconds, as cameras write


def _ms(t: datetime) -> datetime:
    return t.replace(microsecond=(t.microsecond // 1000) * 1000)


# ----------------------------------------------------------------------------- header parsing


@pytest.fixture(scope="module")
def fits_path(tmp_path_factory):
    return tmp_path_factory.mktemp("prop") / "frame.fits"


def _write(path, **cards):
    hdr = fits.Header()
    for k, v in cards.items():
        hdr[k.replace("_", "-")] = v
    fits.PrimaryHDU(np.zeros((4, 5), np.uint16), header=hdr).writeto(path, overwrite=True)


@FAST
@given(t=instants, exptime=exptimes, split=st.booleans())
def test_header_time_is_mid_exposure(fits_path, t, exptime, split):
    t = _ms(t)
    if split:  # old cameras: the date in DATE-OBS, the time of day in TIME-OBS
        _write(fits_path, DATE_OBS=t.strftime("%Y-%m-%d"), TIME_OBS=_iso(t)[11:], EXPTIME=exptime)
    else:
        _write(fits_path, DATE_OBS=_iso(t), EXPTIME=exptime)
    info = ingest.read_header(str(fits_path))
    assert info.status == "ok", info.reason
    assert info.exptime == pytest.approx(exptime, rel=1e-12)
    # astropy's arithmetic, as on a day with a leap second a UTC day is 86401 s long
    expect = (Time(_iso(t), scale="utc") + TimeDelta(exptime / 2, format="sec")).jd
    assert abs(info.jd_utc_mid - expect) < JD_TOL
    assert info.shape == (4, 5)


junk = st.text(alphabet=string.ascii_letters + string.punctuation + " ", min_size=1, max_size=20)


@FAST
@given(value=junk)
def test_header_junk_exptime_is_named_never_a_crash(fits_path, value):
    try:
        number = float(value)
    except ValueError:
        number = None
    assume(number is None or not math.isfinite(number) or number < 0)
    _write(fits_path, DATE_OBS="2020-01-01T00:00:00", EXPTIME=value)
    info = ingest.read_header(str(fits_path))
    assert info.status == "bad_header"
    assert str(fits_path) in info.reason and "EXPTIME" in info.reason


@FAST
@given(value=junk)
def test_header_junk_date_is_named_never_a_crash(fits_path, value):
    try:
        Time(value.strip())
        assume(False)  # astropy reads it as a time: not junk
    except (ValueError, TypeError):
        pass
    _write(fits_path, DATE_OBS=value, EXPTIME=10.0)
    info = ingest.read_header(str(fits_path))
    assert info.status == "bad_header"
    assert str(fits_path) in info.reason and "DATE-OBS" in info.reason


@FAST
@given(
    h=st.integers(0, 23),
    m=st.integers(0, 59),
    s=st.floats(0, 59.99, allow_nan=False),
    neg=st.booleans(),
)
def test_sexagesimal_angles(h, m, s, neg):
    text = f"{'-' if neg else ''}{h:02d} {m:02d} {s:05.2f}"
    value = float(f"{s:05.2f}")
    expect = (h + m / 60 + value / 3600) * (-1 if neg else 1)
    assert ingest._angle(text, hours=True) == pytest.approx(15 * expect, abs=1e-9)
    assert ingest._angle(text.replace(" ", ":")) == pytest.approx(expect, abs=1e-9)


# ----------------------------------------------------------------------------- time conversion


@FAST
@given(t=instants, exptime=exptimes)
def test_start_mid_end_agree(t, exptime):
    t = t.replace(microsecond=0)
    start = timing.mid_exposure_jd_utc(t.isoformat(), exptime, time_is="start")
    mid = timing.mid_exposure_jd_utc(
        (t + timedelta(seconds=exptime / 2)).isoformat(), exptime, time_is="mid"
    )
    end = timing.mid_exposure_jd_utc(
        (t + timedelta(seconds=exptime)).isoformat(), exptime, time_is="end"
    )
    # datetime arithmetic knows no leap seconds: leave out exposures that span one
    span = Time((t + timedelta(seconds=exptime)).isoformat()) - Time(t.isoformat())
    assume(abs(span.sec - exptime) < 0.5)
    assert abs(mid - start) < JD_TOL
    assert abs(end - start) < JD_TOL


@FAST
@given(t=instants, offset_min=st.sampled_from([-600, -420, -300, 0, 60, 330, 345, 540, 780]))
def test_local_time_with_offset_is_the_same_instant(t, offset_min):
    t = t.replace(microsecond=0)
    local = t + timedelta(minutes=offset_min)
    sign = "+" if offset_min >= 0 else "-"
    hh, mm = divmod(abs(offset_min), 60)
    utc = timing.mid_exposure_jd_utc(t.isoformat(), 30.0)
    loc = timing.mid_exposure_jd_utc(f"{local.isoformat()}{sign}{hh:02d}:{mm:02d}", 30.0)
    assert abs(utc - loc) < JD_TOL


@settings(max_examples=8, deadline=None)  # each example loads the ephemeris: slow
@given(
    t=st.datetimes(min_value=datetime(2005, 1, 1), max_value=datetime(2023, 12, 31)),
    ra=st.floats(0, 359.99),
    dec=st.floats(-89, 89),
    lat=st.floats(-60, 60),
    lon=st.floats(-180, 180),
)
def test_bjd_within_light_travel_time_of_the_sun(t, ra, dec, lat, lon):
    jd = Time(t, scale="utc").jd
    site = EarthLocation.from_geodetic(lon, lat, 1000.0)
    coord = SkyCoord(ra, dec, unit="deg")
    bjd = timing.bjd_tdb(jd, coord, site)
    tdb_minus_utc = (Time(jd, format="jd", scale="utc").tdb.jd - jd) * 86400
    # the barycentric correction is at most the light time across 1.017 au (~508 s)
    ltt = (bjd - jd) * 86400 - tdb_minus_utc
    assert abs(ltt) < 510


# ----------------------------------------------------------------------------- photometry


def _star(shape, x0, y0, flux, sigma):
    """A Gaussian star integrated over each pixel (its pixels sum to flux)."""
    ny, nx = shape
    s2 = sigma * math.sqrt(2)
    xs = np.arange(nx)
    ys = np.arange(ny)
    fx = 0.5 * (erf((xs + 0.5 - x0) / s2) - erf((xs - 0.5 - x0) / s2))
    fy = 0.5 * (erf((ys + 0.5 - y0) / s2) - erf((ys - 0.5 - y0) / s2))
    return flux * np.outer(fy, fx)


APS = measure.Apertures((7.0,), (12.0, 18.0))


def _flux(img, x, y, aps=APS):
    m = measure.measure_stars(img, np.atleast_1d(x), np.atleast_1d(y), aps, gain=1.0)
    return m["flux"][:, 0]


positions = st.floats(40.0, 60.0, allow_nan=False)
sigmas = st.floats(0.8, 1.4)


@FAST
@given(
    x=positions,
    y=positions,
    sigma=sigmas,
    flux=st.floats(1e3, 1e7),
    scale=st.floats(0.01, 100.0),
    sky=st.floats(0.0, 5000.0),
)
def test_flux_linear_in_the_image(x, y, sigma, flux, scale, sky):
    star = _star((100, 100), x, y, flux, sigma)
    # numbers agree to float32 rounding of all the light in the aperture (star + sky), far
    # below its photon noise
    total = flux + sky * math.pi * APS.radii[0] ** 2
    base = _flux(star + sky, x, y)[0]
    assert base == pytest.approx(flux, rel=1e-4, abs=1e-6 * total)  # > 99.99 % in the aperture
    # brighter star, same sky: proportionally more flux (base's rounding is scaled up too)
    brighter = _flux(scale * star + sky, x, y)[0]
    tol = 1e-6 * (scale * flux + (1 + scale) * total)
    assert brighter == pytest.approx(scale * base, abs=tol)
    # the whole image scaled (sky too): flux scales alike
    assert _flux(scale * (star + sky), x, y)[0] == pytest.approx(
        scale * base, abs=2e-6 * scale * total
    )


@FAST
@given(
    x=positions,
    y=positions,
    sigma=sigmas,
    dx=st.integers(-30, 30),
    dy=st.integers(-30, 30),
    fx=st.floats(-0.5, 0.5),
    fy=st.floats(-0.5, 0.5),
)
def test_flux_unchanged_when_the_frame_shifts(x, y, sigma, dx, dy, fx, fy):
    sky = 800.0
    img = _star((100, 100), x, y, 5e5, sigma) + sky
    f0 = _flux(img, x, y)[0]
    # whole-pixel shift of the frame: the very same pixels under the aperture
    big = np.full((170, 170), sky)
    big[35 + dy : 135 + dy, 35 + dx : 135 + dx] = img
    assert _flux(big, x + 35 + dx, y + 35 + dy)[0] == pytest.approx(f0, rel=1e-12)
    # sub-pixel shift: the star lands on other pixels; exact-overlap apertures keep the flux
    moved = _star((100, 100), x + fx, y + fy, 5e5, sigma) + sky
    assert _flux(moved, x + fx, y + fy)[0] == pytest.approx(f0, rel=1e-4)


@settings(max_examples=15, deadline=None)
@given(
    n_frames=st.integers(5, 15),
    n_stars=st.integers(4, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_identical_stars_give_a_flat_differential_curve(n_frames, n_stars, seed):
    rng = np.random.default_rng(seed)
    xy = np.column_stack([30 + 40 * np.arange(n_stars), np.full(n_stars, 40.0)])
    xy = xy + rng.uniform(-0.5, 0.5, xy.shape)
    shape = (80, 40 * n_stars + 20)
    mags = np.empty((n_frames, n_stars))
    errs = np.empty((n_frames, n_stars))
    for k in range(n_frames):
        transparency = rng.uniform(0.2, 1.0)  # clouds dim every star alike
        sky = rng.uniform(100, 3000)
        img = np.full(shape, sky)
        for x, y in xy:
            img += _star(shape, x, y, 2e5 * transparency, 1.1)
        m = measure.measure_stars(img, xy[:, 0], xy[:, 1], APS, gain=1.0)
        mags[k] = -2.5 * np.log10(m["flux"][:, 0])
        errs[k] = 1.0857 * m["flux_err"][:, 0] / m["flux"][:, 0]
    names = [f"C{i}" for i in range(1, n_stars)]
    ens = ensemble.everett_howell(
        mags[:, 1:], errs[:, 1:], np.ones_like(mags[:, 1:], bool), names, reject=False
    )
    diff, _ = ensemble.differential(mags[:, 0], errs[:, 0], ens)
    assert np.all(np.isfinite(diff))
    assert np.ptp(diff) < 1e-6  # mag: flat, whatever the clouds and the sky did
