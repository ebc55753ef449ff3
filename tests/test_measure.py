"""Measurement against analytic expectations."""

import numpy as np
import pytest

from tsphot import measure


def gaussian_star(shape, x0, y0, flux, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


def test_flat_image_flux_is_level_times_area():
    """A flat image of level L gives L × exact aperture area in the aperture, and sky = L."""
    data = np.full((101, 101), 7.0, dtype=np.float32)
    ap = measure.Apertures((3.3, 5.0), (10.0, 15.0))
    m = measure.measure_stars(data, np.array([50.2]), np.array([49.7]), ap, gain=1.0)
    assert m["sky"][0] == pytest.approx(7.0)
    # sky-subtracted: zero flux; raw sum = level × area exactly (exact overlap)
    assert np.allclose(m["flux"], 0.0, atol=1e-6)
    ap0 = measure.Apertures((3.3,), (10.0, 15.0))
    data2 = data.copy()
    data2[:, :] = 7.0
    data2[np.abs(np.arange(101) - 70) < 100] += 0  # unchanged
    m2 = measure.measure_stars(data2 + 0, np.array([50.2]), np.array([49.7]), ap0, gain=1.0)
    assert m2["area"][0, 0] == pytest.approx(np.pi * 3.3**2)


def test_exact_sum_of_flat_level_equals_area():
    """With the sky forced to zero (an annulus on empty data) the sum is level × π r²."""
    data = np.zeros((101, 101), dtype=np.float32)
    data[30:71, 30:71] = 5.0  # the aperture lies inside the plateau, the annulus partly outside
    ap = measure.Apertures((4.7,), (30.0, 40.0))
    m = measure.measure_stars(data, np.array([50.0]), np.array([50.0]), ap, gain=2.0)
    assert m["sky"][0] == pytest.approx(0.0)
    assert m["flux"][0, 0] == pytest.approx(2.0 * 5.0 * np.pi * 4.7**2, rel=1e-6)


def test_star_flux_and_error_match_ccd_equation():
    """A noiseless Gaussian star on a flat sky: flux recovered; error equals the CCD equation."""
    sky, flux, gain = 100.0, 50000.0, 2.0
    data = (gaussian_star((121, 121), 60.3, 59.6, flux, 1.5) + sky).astype(np.float32)
    ap = measure.Apertures((8.0,), (15.0, 25.0))
    m = measure.measure_stars(data, np.array([60.3]), np.array([59.6]), ap, gain=gain)
    assert m["flux"][0, 0] == pytest.approx(flux * gain, rel=1e-4)
    # sky std is zero here, so the error is pure photon noise of the star (electrons)
    assert m["flux_err"][0, 0] == pytest.approx(np.sqrt(flux * gain), rel=1e-4)


def test_error_matches_scatter_of_noise_realisations():
    """Reported flux error equals the scatter of fluxes measured on many noisy images (±8 %)."""
    rng = np.random.default_rng(3)
    gain, rn, sky_e, flux_e = 1.5, 8.0, 300.0, 20000.0
    truth = gaussian_star((81, 81), 40.0, 40.0, flux_e, 1.8) + sky_e
    ap = measure.Apertures((6.0,), (12.0, 20.0))
    fluxes, errs = [], []
    for _ in range(300):
        e = rng.poisson(truth) + rng.normal(0, rn, truth.shape)
        adu = (e / gain).astype(np.float32)
        m = measure.measure_stars(adu, np.array([40.0]), np.array([40.0]), ap, gain=gain)
        fluxes.append(m["flux"][0, 0])
        errs.append(m["flux_err"][0, 0])
    assert np.mean(fluxes) == pytest.approx(flux_e, rel=0.01)
    assert np.std(fluxes) / np.median(errs) == pytest.approx(1.0, abs=0.08)


def test_saturation_flag():
    data = np.full((61, 61), 100.0, dtype=np.float32)
    data[30, 30] = 65535.0
    ap = measure.Apertures((5.0,), (10.0, 15.0))
    m = measure.measure_stars(
        data, np.array([30.0, 10.0]), np.array([30.0, 10.0]), ap, gain=1.0, saturation=65535.0
    )
    assert m["saturated"].tolist() == [True, False]
    assert m["peak"][0] == 65535.0


def test_recentre_finds_star_and_refuses_far_or_faint():
    data = gaussian_star((81, 81), 42.3, 37.8, 1e5, 1.5).astype(np.float32) + 100
    rng = np.random.default_rng(0)
    data += rng.normal(0, 1.0, data.shape).astype(np.float32)
    x, y, moved = measure.recentre(data, np.array([41.0, 60.0]), np.array([39.0, 60.0]), 11, 3.0)
    assert moved.tolist() == [True, False]
    assert x[0] == pytest.approx(42.3, abs=0.05)
    assert y[0] == pytest.approx(37.8, abs=0.05)
    assert (x[1], y[1]) == (60.0, 60.0)  # blank sky: prediction kept


def test_elliptical_area():
    assert measure.aperture_area(4.0, 0.5) == pytest.approx(np.pi * 16 * 0.5)
    data = np.full((61, 61), 2.0, dtype=np.float32)
    data[:, :] = 2.0
    ap = measure.Apertures((6.0,), (40.0, 45.0), ellipticity=0.3, theta_deg=30.0)
    img = np.zeros((61, 61), np.float32)
    img[20:41, 20:41] = 2.0
    m = measure.measure_stars(img, np.array([30.0]), np.array([30.0]), ap, gain=1.0)
    assert m["flux"][0, 0] == pytest.approx(2.0 * np.pi * 36 * 0.7, rel=1e-6)


def test_cosmic_ray_in_aperture_cleaned_and_counted():
    """A cosmic ray on a star is removed; the star's own core is not mistaken for one."""
    rng = np.random.default_rng(5)
    sky, gain = 200.0, 1.5
    base = gaussian_star((81, 81), 40.2, 39.7, 3e5, 1.5) + sky
    img = (rng.poisson(base * gain) / gain).astype(np.float32)
    ap = measure.Apertures((6.0,), (12.0, 20.0))
    fw = 2.3548 * 1.5
    clean = measure.measure_stars(
        img, np.array([40.2]), np.array([39.7]), ap, gain=gain, fwhm=fw, clean_cosmics=True
    )
    hit = img.copy()
    hit[44, 44] += 4000.0  # a one-pixel cosmic ray inside the aperture
    hit[36, 36:38] += 4000.0  # and a short track
    m = measure.measure_stars(
        hit, np.array([40.2]), np.array([39.7]), ap, gain=gain, fwhm=fw, clean_cosmics=True
    )
    assert clean["cosmic_pixels"][0] == 0
    assert m["cosmic_pixels"][0] == 3
    assert m["flux"][0, 0] == pytest.approx(clean["flux"][0, 0], rel=2e-3)


def test_undersampled_star_core_not_flagged():
    """A sharp (FWHM 1.8 px) but real star keeps every pixel."""
    rng = np.random.default_rng(2)
    base = rng.poisson(gaussian_star((61, 61), 30.0, 30.0, 2e5, 0.76) + 100.0).astype(np.float32)
    ap = measure.Apertures((4.0,), (8.0, 14.0))
    m = measure.measure_stars(
        base, np.array([30.0]), np.array([30.0]), ap, 1.0, fwhm=1.8, clean_cosmics=True
    )
    assert m["cosmic_pixels"][0] == 0


def test_star_centred_on_pixel_corner_not_flagged():
    """An undersampled star centred between four pixels (a 2×2 core) keeps every pixel."""
    rng = np.random.default_rng(4)
    base = rng.poisson(gaussian_star((61, 61), 30.5, 30.5, 5e4, 0.85) + 350.0).astype(np.float32)
    ap = measure.Apertures((4.0,), (8.0, 14.0))
    for fw in (2.0, 3.0):
        m = measure.measure_stars(
            base, np.array([30.5]), np.array([30.5]), ap, 1.0, fwhm=fw, clean_cosmics=True
        )
        assert m["cosmic_pixels"][0] == 0


def moffat_star(shape, x0, y0, flux, fwhm, beta=3.0):
    """Pixel-integrated Moffat star (the simulator's PSF), unit-sum times flux."""
    from tsphot.synthetic.psf import render_stamps

    img = np.zeros(shape)
    ix, iy = round(x0), round(y0)
    h = 15
    st = render_stamps(np.array([x0 - ix]), np.array([y0 - iy]), h, fwhm, beta)[0]
    img[iy - h : iy + h + 1, ix - h : ix + h + 1] += flux * st
    return img


@pytest.mark.parametrize("method", measure.CENTROID_METHODS)
def test_centroid_methods_recover_subpixel_positions(method):
    """Every method finds noisy Moffat stars within 0.05 px of their true centres."""
    rng = np.random.default_rng(11)
    truth = rng.uniform(30, 70, (12, 2)).round() + rng.uniform(-0.5, 0.5, (12, 2))
    errs = []
    for k, (tx, ty) in enumerate(truth):
        img = moffat_star((101, 101), tx, ty, 2e5, 3.5) + 300.0
        img = rng.poisson(img).astype(np.float32)
        guess_x, guess_y = tx + rng.uniform(-1.5, 1.5), ty + rng.uniform(-1.5, 1.5)
        x, y, moved = measure.recentre(
            img, np.array([guess_x]), np.array([guess_y]), 11, 3.0, method=method, fwhm=3.5
        )
        assert moved[0], f"star {k} not recentred"
        errs.append(np.hypot(x[0] - tx, y[0] - ty))
    assert max(errs) < 0.05


@pytest.mark.parametrize("method", measure.CENTROID_METHODS)
@pytest.mark.parametrize(("sep_px", "contrast"), [(7.0, 20.0), (8.0, 10.0), (5.0, 3.0)])
def test_brighter_neighbour_does_not_capture_the_aperture(method, sep_px, contrast):
    """A brighter neighbour inside the 15 px search box, the prediction 1.5 px off towards it:
    the faint star keeps its own centre (within 0.25 px), and the neighbour is found too."""
    rng = np.random.default_rng(3)
    fx, fy = 50.3, 49.6
    nx_, ny_ = fx + sep_px, fy + 0.3 * sep_px
    img = moffat_star((101, 101), fx, fy, 2e4, 3.0)
    img += moffat_star((101, 101), nx_, ny_, 2e4 * contrast, 3.0)
    img = rng.poisson(img + 200.0).astype(np.float32)
    x, y, moved = measure.recentre(
        img, np.array([fx + 1.5]), np.array([fy]), 15, 3.0, min_snr=5.0, method=method, fwhm=3.0
    )
    assert moved[0]
    assert np.hypot(x[0] - fx, y[0] - fy) < 0.25
    x2, y2, _ = measure.recentre(
        img, np.array([nx_ - 1.0]), np.array([ny_ + 1.0]), 15, 3.0, method=method, fwhm=3.0
    )
    assert np.hypot(x2[0] - nx_, y2[0] - ny_) < 0.25


def test_unresolved_faint_neighbour_keeps_the_prediction():
    """A star 20x fainter on the shoulder of a bright one (2 FWHM apart) has no peak of its own:
    the prediction is kept rather than sliding to the bright star."""
    rng = np.random.default_rng(3)
    img = moffat_star((101, 101), 50.3, 49.6, 2e4, 3.0)
    img += moffat_star((101, 101), 56.3, 49.6, 4e5, 3.0)
    img = rng.poisson(img + 200.0).astype(np.float32)
    for method in measure.CENTROID_METHODS:
        x, y, moved = measure.recentre(
            img, np.array([51.8]), np.array([49.6]), 15, 3.0, method=method, fwhm=3.0
        )
        assert not moved[0] and (x[0], y[0]) == (51.8, 49.6)


def test_centroid_keeps_prediction_beyond_max_shift_or_on_blank_sky():
    rng = np.random.default_rng(8)
    img = rng.poisson(moffat_star((81, 81), 40.0, 40.0, 1e5, 3.0) + 100.0).astype(np.float32)
    # the star is 4 px from the prediction: further than max_shift = 3
    x, y, moved = measure.recentre(img, np.array([44.0, 20.0]), np.array([40.0, 20.0]), 11, 3.0)
    assert moved.tolist() == [False, False]
    assert (x.tolist(), y.tolist()) == ([44.0, 20.0], [40.0, 20.0])
    with pytest.raises(ValueError, match="centroid method"):
        measure.recentre(img, x, y, method="psf")


def test_sky_estimators_on_gaussian_sky_agree_with_truth():
    """On pure Gaussian sky all three estimators give the level within their expected error."""
    rng = np.random.default_rng(1)
    level, sd = 500.0, 10.0
    xs = np.arange(30.0, 480.0, 60.0)
    xx, yy = np.meshgrid(xs, xs)
    img = rng.normal(level, sd, (512, 512)).astype(np.float32)
    for method, factor in measure.SKY_VAR_FACTOR.items():
        sky, std, cnt = measure.annulus_sky(img, xx.ravel(), yy.ravel(), 10, 20, method=method)
        err = sd * np.sqrt(factor / cnt)
        pulls = (sky - level) / err
        # the pull distribution has unit width when the variance factor is right (64 stars)
        assert abs(np.mean(pulls)) < 0.5
        assert 0.7 < np.std(pulls) < 1.3, method
        assert np.median(std) == pytest.approx(sd, rel=0.03)


def test_stars_in_the_annulus_are_masked():
    """A bright star in the annulus biases the unmasked sky; masking it (radius from its peak)
    restores the sky measured without that star, within 0.3 ADU (the sky mean's own noise)."""
    rng = np.random.default_rng(2)
    base = rng.normal(300.0, 5.0, (121, 121)) + moffat_star((121, 121), 60.0, 60.0, 1e5, 3.0)
    bright = moffat_star((121, 121), 75.0, 62.0, 5e5, 3.0)
    img = (base + bright).astype(np.float32)
    x, y = np.array([60.0]), np.array([60.0])
    alone = measure.annulus_stats(base.astype(np.float32), x, y, 10, 20)
    plain = measure.annulus_stats(img, x, y, 10, 20)
    mxy = np.array([[60.0, 60.0], [75.0, 62.0]])
    rad = measure.mask_radius_for(np.array([7e3, bright.max()]), 5.0, 3.0)
    assert 12 < rad[1] < 24
    masked = measure.annulus_stats(img, x, y, 10, 20, mask_xy=mxy, mask_radius=rad)
    assert masked["masked"][0] > 200 and plain["masked"][0] == 0
    for est in ("median", "mean", "mode"):
        assert abs(masked[est][0] - alone[est][0]) < 0.3, est
    assert plain["mean"][0] - alone["mean"][0] > 2.0


def test_mode_resists_faint_stars_in_the_annulus():
    """Many faint unresolved stars skew the sky upwards; mode < median < mean, closest to truth."""
    rng = np.random.default_rng(4)
    img = rng.normal(200.0, 4.0, (201, 201))
    for _ in range(400):
        img += moffat_star((201, 201), *rng.uniform(20, 180, 2), rng.uniform(200, 3000), 3.0)
    img = img.astype(np.float32)
    s = measure.annulus_stats(img, np.array([100.0]), np.array([100.0]), 20, 80)
    assert s["mode"][0] < s["median"][0] < s["mean"][0]
    assert abs(s["mode"][0] - 200.0) < abs(s["mean"][0] - 200.0)
