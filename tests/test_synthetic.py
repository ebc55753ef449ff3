"""The simulator against analytic expectations: seeding, headers, calibration frames, star
fluxes, the PSF, the noise model and the astrophysics in the truth."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy import integrate

from tsphot.synthetic import (
    SimConfig,
    Truth,
    enclosed_fraction,
    expected_star_sigma,
    expected_star_terms,
    load_truth,
    moffat_alpha,
    scintillation_sigma,
    simulate_night,
)
from tsphot.synthetic.psf import render_stamps

# A small night: 12 frames of 256 x 256 spread over 2.75 h so that the 2 h transit fits.
SMALL = {"n_frames": 12, "size": (256, 256), "n_stars": 60, "cadence": 900.0, "seed": 3}
CAL1 = {"n_bias": 1, "n_dark": 1, "n_flat": 1}


def small(**kw: object) -> SimConfig:
    return SimConfig(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    return simulate_night(tmp_path_factory.mktemp("night"), small())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _calibrated(truth: Truth, path: Path, exptime: float) -> np.ndarray:
    """Electrons per pixel of a raw frame with the true bias, dark and flat removed."""
    maps = truth.maps()
    adu = fits.getdata(path).astype(float)
    e = (adu - maps["BIAS_COLUMNS"][None, :]) * truth.config.gain
    return (e - maps["DARK_RATE"] * exptime) / maps["FLAT"]


def _sky_plane(truth: Truth) -> np.ndarray:
    nx, ny = truth.config.size
    cx, cy = truth.meta["frame_centre"]
    sky = truth.meta["sky"]
    ang = math.radians(sky["gradient_angle_deg"])
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    proj = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
    return 1.0 + sky["gradient"] * proj / sky["extent_px"]


# ---------------------------------------------------------------------------------------------
# Seeding


def test_same_seed_identical_bytes_different_seed_differs(night: Truth, tmp_path: Path) -> None:
    again = simulate_night(tmp_path / "again", small())
    a, b = _files(night.out_dir), _files(again.out_dir)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    forked = simulate_night(tmp_path / "forked", small(), workers=2)
    assert _files(forked.out_dir) == a
    other = simulate_night(tmp_path / "other", small(seed=4))
    c = _files(other.out_dir)
    assert c["raw/sci_0000.fits"] != a["raw/sci_0000.fits"]
    assert c["truth_stars.ecsv"] != a["truth_stars.ecsv"]


def test_frame_noise_independent_of_frame_count(tmp_path: Path) -> None:
    # With every trend over the night switched off, frame 1 is the same whatever the night length.
    still = {
        "drift": (0.0, 0.0),
        "rotation_deg": 0.0,
        "jitter": 0.0,
        "clouds": False,
        "seeing_wiggle": 0.0,
        "fwhm_end": 3.5,
        "transit_depth": 0.0,
        "variable_comp_amp": 0.0,
        **CAL1,
    }
    a = simulate_night(tmp_path / "a", small(n_frames=2, **still))
    b = simulate_night(tmp_path / "b", small(n_frames=4, **still))
    name = "raw/sci_0001.fits"
    assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    assert np.array_equal(a.star_frames(0)["flux_e"][:2], b.star_frames(0)["flux_e"][:2])


def test_noise_seed_keeps_the_field(night: Truth, tmp_path: Path) -> None:
    cfg = small(noise_seed=99, n_frames=3)
    other = simulate_night(tmp_path / "n", cfg)
    assert np.array_equal(other.stars["x"], night.stars["x"])
    assert np.array_equal(other.stars["mag"], night.stars["mag"])
    d0 = fits.getdata(night.out_dir / "raw/sci_0000.fits")
    d1 = fits.getdata(other.out_dir / "raw/sci_0000.fits")
    assert not np.array_equal(d0, d1)


# ---------------------------------------------------------------------------------------------
# Headers and time


def test_headers_like_a_camera(night: Truth) -> None:
    cfg = night.config
    for k, path in enumerate(night.science_files()):
        raw = fits.open(path, do_not_scale_image_data=True)[0]
        h = raw.header
        assert h["BITPIX"] == 16 and h["BZERO"] == 32768 and raw.data.dtype.kind == "i"
        for key in (
            "DATE-OBS EXPTIME EXPOSURE GAIN RDNOISE FILTER IMAGETYP OBJECT SITELAT SITELONG "
            "SITEELEV RA DEC OBJCTRA OBJCTDEC AIRMASS TELESCOP INSTRUME XBINNING YBINNING "
            "CCD-TEMP SATURATE NAXIS1 NAXIS2 CTYPE1 CRPIX1"
        ).split():
            assert key in h, key
        assert h["IMAGETYP"] == "Light Frame" and h["NAXIS1"] == cfg.size[0]
        assert h["SITELONG"] == cfg.site[1] and h["SATURATE"] == cfg.saturation_adu
        mid = Time(h["DATE-OBS"], scale="utc") + h["EXPTIME"] / 2 * u.s
        assert abs(mid.jd - night.exposures["jd_utc_mid"][k]) * 86400 < 1e-3
        assert h["AIRMASS"] == pytest.approx(night.exposures["airmass"][k], abs=1e-6)
    kinds = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field"}
    for kind, imagetyp in kinds.items():
        for name in night.meta["files"][kind]:
            h = fits.getheader(night.out_dir / name)
            assert h["IMAGETYP"] == imagetyp and h["BZERO"] == 32768
    assert fits.getheader(night.out_dir / night.meta["files"]["dark"][0])["EXPTIME"] == 60.0


def test_times_airmass_and_meridian(tmp_path: Path) -> None:
    # The default night's start: the field crosses the meridian mid-night.
    # 13 frames spanning the default 150 x 75 s night.
    cadence = 149 * 75.0 / 12
    truth = simulate_night(tmp_path, small(n_frames=13, cadence=cadence, **CAL1))
    x = np.asarray(truth.exposures["airmass"])
    assert x.max() < 2.2 and int(np.argmin(x)) == 6 and x[0] == pytest.approx(x[-1], abs=0.01)
    step = np.diff(truth.exposures["jd_utc_mid"]) * 86400
    assert np.allclose(step, cadence, atol=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_wcs_follows_drift_rotation_and_flip(tmp_path: Path, flip: bool) -> None:
    truth = simulate_night(tmp_path, small(meridian_flip=flip, rotation_deg=3.0, n_frames=4))
    for k, path in enumerate(truth.science_files()):
        w = WCS(fits.getheader(path))
        rows = truth.frames[truth.frames["frame"] == k]
        x, y = w.world_to_pixel_values(truth.stars["ra"], truth.stars["dec"])
        assert np.allclose(x, rows["x"], atol=2e-3) and np.allclose(y, rows["y"], atol=2e-3)
        tx, ty = truth.transform(k, truth.stars["x"], truth.stars["y"])
        assert np.allclose(tx, rows["x"], atol=1e-3) and np.allclose(ty, rows["y"], atol=1e-3)
    assert bool(truth.exposures["flipped"][-1]) is flip


def test_toml_points_at_the_target(night: Truth) -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    conf = tomllib.loads((night.out_dir / "tsphot.toml").read_text())
    t = night.stars[night.target]
    assert conf["targets"][0]["name"] == "T1"
    assert conf["targets"][0]["x"] == pytest.approx(t["x"], abs=1e-3)
    assert conf["checks"][0]["y"] == pytest.approx(night.stars[night.check]["y"], abs=1e-3)
    assert conf["frames"] == ["raw/sci_*.fits"] and conf["annulus"] == [15.0, 25.0]
    assert len(list(night.out_dir.glob(conf["bias"][0]))) == night.config.n_bias


# ---------------------------------------------------------------------------------------------
# Calibration frames


def test_bias_level_and_columns(night: Truth) -> None:
    cfg = night.config
    stack = np.array([fits.getdata(night.out_dir / f) for f in night.meta["files"]["bias"]])
    stack = stack.astype(float)
    sigma_mean = math.sqrt((cfg.read_noise / cfg.gain) ** 2 + 1 / 12) / math.sqrt(stack.size)
    assert abs(stack.mean() - cfg.bias_level) < 5 * sigma_mean + 1e-9
    cols = stack.mean(axis=(0, 1))
    truth_cols = night.maps()["BIAS_COLUMNS"]
    sig_col = math.sqrt((cfg.read_noise / cfg.gain) ** 2 + 1 / 12) / math.sqrt(stack.shape[0] * 256)
    assert np.std(cols - truth_cols) < 1.3 * sig_col
    assert np.std(truth_cols) == pytest.approx(cfg.bias_column_amp, rel=1e-6)


def test_dark_current_and_hot_pixels(night: Truth) -> None:
    cfg = night.config
    bias = np.mean([fits.getdata(night.out_dir / f) for f in night.meta["files"]["bias"]], axis=0)
    darks = np.array([fits.getdata(night.out_dir / f) for f in night.meta["files"]["dark"]])
    excess = np.median(darks.astype(float), axis=0) - bias  # median: cosmic rays out
    hot = night.meta["hot_pixels"]
    mask = np.ones(excess.shape, bool)
    mask[hot["y"], hot["x"]] = False
    expected = cfg.dark_current * cfg.exptime / cfg.gain
    assert np.mean(excess[mask]) == pytest.approx(expected, abs=0.1)
    rate = excess[hot["y"], hot["x"]] * cfg.gain / cfg.exptime
    strong = np.asarray(hot["rate_e_per_s"]) > 20
    assert np.allclose(rate[strong], np.asarray(hot["rate_e_per_s"])[strong], rtol=0.1, atol=1.0)


def test_flat_structure_recovered(night: Truth) -> None:
    bias = np.mean([fits.getdata(night.out_dir / f) for f in night.meta["files"]["bias"]], axis=0)
    flats = []
    for f in night.meta["files"]["flat"]:
        d = fits.getdata(night.out_dir / f).astype(float) - bias
        flats.append(d / np.median(d))
    master = np.median(flats, axis=0)
    master /= master.mean()
    true = night.maps()["FLAT"]
    hot = night.meta["hot_pixels"]
    ratio = master / true
    ratio[hot["y"], hot["x"]] = 1.0
    # per-pixel noise of a 10-flat median at ~30000 e-: ~0.25 %
    assert np.std(ratio) < 0.004
    assert np.corrcoef(master.ravel(), true.ravel())[0, 1] > 0.95
    # vignetting: corners darker than the centre by about flat_vignetting
    c = master[118:138, 118:138].mean()
    corner = master[:10, :10].mean()
    assert 1 - corner / c == pytest.approx(night.config.flat_vignetting, abs=0.03)


# ---------------------------------------------------------------------------------------------
# Stars, PSF, noise


def test_star_pixel_sum_equals_truth_flux(tmp_path: Path) -> None:
    truth = simulate_night(tmp_path, small(n_stars=12, cosmic_rays=False, n_frames=3))
    cfg = truth.config
    plane = _sky_plane(truth)
    # A circle of 14 px: > 99.8 % of the flux; neighbours (>= 30 px away) add < 1e-4 of theirs.
    radius = 14.0
    yy, xx = np.mgrid[0 : cfg.size[1], 0 : cfg.size[0]]
    zs = []
    for k, path in enumerate(truth.science_files()):
        img = _calibrated(truth, path, cfg.exptime)
        img -= truth.exposures["sky_e_per_pix_centre"][k] * plane
        for star in [truth.target, truth.check, *truth.comparisons]:
            row = truth.frames[(truth.frames["frame"] == k) & (truth.frames["star"] == star)][0]
            inside = (xx - row["x"]) ** 2 + (yy - row["y"]) ** 2 <= radius**2
            n = inside.sum()
            var = row["flux_e"] + n * (row["sky_e_per_pix"] + cfg.read_noise**2 + 3.0)
            expected = row["flux_e"] * enclosed_fraction(radius, row["fwhm"], cfg.moffat_beta)
            zs.append((img[inside].sum() - expected) / math.sqrt(var))
    zs = np.array(zs)
    assert np.all(np.abs(zs) < 4.5), zs
    assert abs(zs.mean()) < 4 / math.sqrt(zs.size)


def test_enclosed_fraction_analytic() -> None:
    assert enclosed_fraction(1e9, 4.0, 3.0) == pytest.approx(1.0, abs=1e-12)
    assert enclosed_fraction(0.0, 4.0, 3.0) == 0.0
    for fwhm, beta in [(3.5, 3.0), (4.5, 2.5), (2.0, 4.7)]:
        a = moffat_alpha(fwhm, beta)

        def prof(r: float, a: float = a, beta: float = beta) -> float:
            return (beta - 1) / (math.pi * a * a) * (1 + (r / a) ** 2) ** (-beta)

        # half maximum at FWHM / 2
        assert prof(fwhm / 2) == pytest.approx(prof(0) / 2, rel=1e-12)
        for r in (1.0, 3.0, 8.0, 20.0):
            num, _ = integrate.quad(lambda s, f=prof: 2 * math.pi * s * f(s), 0, r)
            assert enclosed_fraction(r, fwhm, beta) == pytest.approx(num, rel=1e-9)
    vec = enclosed_fraction(8.0, np.array([3.5, 4.5]), 3.0)
    assert vec.shape == (2,) and vec[0] > vec[1]


def test_rendered_stamp_matches_enclosed_fraction() -> None:
    stamp = render_stamps(np.array([0.3]), np.array([-0.2]), 60, 4.0, 3.0, oversample=5)[0]
    assert stamp.sum() == pytest.approx(1.0, abs=1e-9)
    yy, xx = np.mgrid[-60:61, -60:61]
    for r in (6.0, 10.0, 20.0):
        inside = (xx - 0.3) ** 2 + (yy + 0.2) ** 2 <= r * r
        # center-mode pixel circle vs analytic circle: agree to the pixelisation level
        assert stamp[inside].sum() == pytest.approx(enclosed_fraction(r, 4.0, 3.0), abs=0.01)


def test_scatter_matches_expected_sigma(tmp_path: Path) -> None:
    """Variance of aperture fluxes over independent noise realisations of the same night."""
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        CircularAperture,
        aperture_photometry,
    )

    r, r_in, r_out = 6.0, 12.0, 20.0
    n_real = 10
    truths = [
        simulate_night(tmp_path / f"r{i}", small(noise_seed=100 + i, cosmic_rays=False, **CAL1))
        for i in range(n_real)
    ]
    t0 = truths[0]
    # target, check and comparisons: isolated by construction (nothing within 3 mag inside 25 px)
    stars = np.array([t0.target, t0.check, *t0.comparisons])
    fluxes = np.zeros((n_real, t0.n_frames, stars.size))
    n_sky = np.zeros((t0.n_frames, stars.size))
    for i, tr in enumerate(truths):
        for k, path in enumerate(tr.science_files()):
            img = _calibrated(tr, path, tr.config.exptime)
            rows = tr.frames[tr.frames["frame"] == k][stars]
            pos = np.column_stack([rows["x"], rows["y"]])
            ap = CircularAperture(pos, r)
            ann = CircularAnnulus(pos, r_in, r_out)
            stats = ApertureStats(img, ann, sum_method="center")
            tab = aperture_photometry(img, ap, method="center")
            fluxes[i, k] = np.asarray(tab["aperture_sum"]) - stats.mean * np.pi * r * r
            n_sky[k] = stats.sum_aper_area.value
    var = fluxes.var(axis=0, ddof=1)
    expected = np.array(
        [
            expected_star_sigma(t0, int(s), r, float(np.median(n_sky[:, j]))) ** 2
            for j, s in enumerate(stars)
        ]
    ).T
    # ~1000 degrees of freedom: the ratio is known to ~5 %
    assert var.sum() / expected.sum() == pytest.approx(1.0, rel=0.1)


def test_expected_terms_add_up(night: Truth) -> None:
    terms = expected_star_terms(night, night.target, 8.0, 1257.0)
    parts = ("photon", "sky", "dark", "read", "digitisation", "scintillation")
    total = np.sqrt(sum(terms[p] ** 2 for p in parts))
    assert np.allclose(total, terms["total"])
    assert np.allclose(expected_star_sigma(night, night.target, 8.0, 1257.0), total)
    rows = night.star_frames(night.target)
    sig = scintillation_sigma(rows["airmass"], 0.4, 2300.0, 60.0)
    manual = 1.5 * 0.09 * 40 ** (-2 / 3) * np.asarray(rows["airmass"], float) ** 1.75
    manual *= math.exp(-2300 / 8000) / math.sqrt(120)
    assert np.allclose(sig, manual) and np.allclose(rows["scint_frac"], manual, rtol=1e-6)
    snr = terms["flux_ap"] / terms["total"]
    assert 250 < np.median(snr) < 700


# ---------------------------------------------------------------------------------------------
# Astrophysics in the truth


def test_transit_has_requested_depth(night: Truth) -> None:
    import batman

    tr = night.transit
    cfg = night.config
    assert tr["depth"] == cfg.transit_depth and tr["rp_rs"] ** 2 == pytest.approx(tr["depth"])
    p = batman.TransitParams()
    p.t0, p.per, p.rp, p.a, p.inc = (
        tr["t0_bjd_tdb"],
        tr["period_d"],
        tr["rp_rs"],
        tr["a_rs"],
        tr["inc_deg"],
    )
    p.ecc, p.w, p.limb_dark, p.u = 0.0, 90.0, "quadratic", tr["ld"]
    t = np.linspace(tr["t0_bjd_tdb"] - 0.1, tr["t0_bjd_tdb"] + 0.1, 20001)
    lc = batman.TransitModel(p, t).light_curve(p)
    # total duration T14 as requested
    in_transit = t[lc < 1.0]
    assert (in_transit[-1] - in_transit[0]) * 24 == pytest.approx(cfg.transit_duration_h, abs=0.01)
    # the depth: (Rp/Rs)^2 times the limb-darkening contrast at impact parameter b
    mu = math.sqrt(1 - cfg.impact_param**2)
    u1, u2 = tr["ld"]
    contrast = (1 - u1 * (1 - mu) - u2 * (1 - mu) ** 2) / (1 - u1 / 3 - u2 / 6)
    assert 1 - lc.min() == pytest.approx(tr["depth"] * contrast, rel=0.03)
    # the truth follows the model at each frame's BJD_TDB
    rows = night.star_frames(night.target)
    lc_f = batman.TransitModel(p, np.asarray(night.exposures["bjd_tdb_mid"])).light_curve(p)
    assert np.allclose(rows["astro_factor"], lc_f, atol=2e-7)
    assert np.min(rows["astro_factor"]) < 1 - 0.9 * tr["depth"]
    # mid-time sits at transit_mid_frac of the night, in UTC too
    jd = np.asarray(night.exposures["jd_utc_mid"])
    t0_utc = jd[0] + cfg.transit_mid_frac * (jd[-1] - jd[0])
    assert abs(tr["t0_jd_utc"] - t0_utc) * 86400 < 1e-3
    # the flux chain: flux x exptime x extinction x transparency x astro x scintillation
    f0 = night.stars["flux_e_per_s"][night.target] * cfg.exptime
    chain = f0 * 10 ** (-0.4 * cfg.extinction * np.asarray(rows["airmass"], float))
    chain *= np.asarray(rows["transparency"], float) * np.asarray(rows["astro_factor"], float)
    assert np.allclose(rows["flux_noscint_e"], chain, rtol=1e-6)
    # scintillation draws: N(0, scint_frac) per star and frame
    z = (night.frames["flux_e"] / night.frames["flux_noscint_e"] - 1) / night.frames["scint_frac"]
    assert abs(np.mean(z)) < 0.15 and np.std(z) == pytest.approx(1.0, rel=0.1)


def test_variable_comp_and_roles(night: Truth) -> None:
    names = list(night.stars["name"])
    assert names[night.target] == "T1" and names[night.check] == "CHK"
    assert len(night.comparisons) == night.config.n_comps
    assert night.variable_comp in night.comparisons
    assert list(np.flatnonzero(night.stars["is_variable"])) == [night.variable_comp]
    rows = night.star_frames(night.variable_comp)
    amp = night.config.variable_comp_amp
    a = np.asarray(rows["astro_factor"], float)
    assert np.all(np.abs(a - 1) <= amp + 1e-7) and np.ptp(a) > 0.5 * amp
    t = np.asarray(night.stars["mag"])
    assert np.all(np.abs(t[night.comparisons] - night.config.target_mag) <= 1.0)


def test_saturated_star_flagged(night: Truth) -> None:
    cfg = night.config
    sat = night.star_frames(night.saturated_star)
    assert np.all(sat["saturated"])
    for k, path in enumerate(night.science_files()):
        data = fits.getdata(path)
        x, y = round(float(sat["x"][k])), round(float(sat["y"][k]))
        assert data[y - 1 : y + 2, x - 1 : x + 2].max() == cfg.saturation_adu
    for star in [night.target, night.check, *night.comparisons]:
        assert not np.any(night.star_frames(star)["saturated"])


def test_clouds_and_cloud_frame(tmp_path: Path) -> None:
    truth = simulate_night(tmp_path, small(n_frames=4, cloud_frame=2, clouds=False))
    tr = np.asarray(truth.exposures["transparency"])
    assert tr[2] == pytest.approx(0.02) and np.allclose(tr[[0, 1, 3]], 1.0)


def test_load_truth_round_trip(night: Truth) -> None:
    back = load_truth(night.out_dir)
    assert back.config == night.config and back.meta == night.meta
    for name in ("stars", "frames", "exposures", "cosmics"):
        a, b = getattr(night, name), getattr(back, name)
        assert a.colnames == b.colnames and len(a) == len(b)
        for c in a.colnames:
            x, y = np.asarray(a[c]), np.asarray(b[c])
            nan = x.dtype.kind == "f"
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=nan), (name, c)
    assert len(back.frames) == night.n_frames * len(night.stars)
    assert back.frames["flux_e"].unit == "electron"
