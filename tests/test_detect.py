"""Detection: sources, FWHM, and telling stars from cosmic rays."""

import numpy as np
import pytest

from tsphot import detect


def _frame(fwhm: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 200² frame: sky 100 ADU with noise 5, 12 Gaussian stars, a 3-px cosmic-ray streak."""
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, (200, 200))
    yy, xx = np.mgrid[:200, :200]
    sig = fwhm / 2.3548
    stars = [(int(x), int(y)) for x, y in rng.uniform(20, 180, (12, 2))]
    for k, (x, y) in enumerate(stars):
        img += (300 + 200 * k) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sig**2))
    cr = [(150, 30), (151, 31), (152, 32)]  # a short diagonal streak, 1,500 ADU per pixel
    for x, y in cr:
        img[y, x] += 1500.0
    return img.astype(np.float32), stars


def test_fwhm_of_gaussian_stars():
    img, _ = _frame(4.0)
    src = detect.find_sources(img, 5.0)
    # half-maximum area of a pixelated Gaussian: within half a pixel of its FWHM
    assert src.fwhm == pytest.approx(4.0, abs=0.5)


def test_cosmic_ray_is_not_star_like():
    img, stars = _frame(4.0)
    src = detect.find_sources(img, 5.0)
    like = src.star_like()
    at_cr = np.hypot(src.x - 151, src.y - 31) < 2
    assert at_cr.sum() == 1 and not like[at_cr][0]
    # every detected real star is kept
    for x, y in stars:
        hit = np.hypot(src.x - x, src.y - y) < 2
        assert hit.any() and like[hit].all(), (x, y)


def test_undersampled_psf_keeps_every_source():
    img, _ = _frame(1.8)
    src = detect.find_sources(img, 5.0)
    assert src.fwhm < 2.5
    assert src.star_like().all()


def test_bright_sources_agree_with_a_full_detection():
    """The registration detector (binned search, full-resolution boxes): every star of the
    frame at its true position, the same FWHM, and no cosmic ray."""
    img, stars = _frame(4.0)
    full = detect.find_sources(img, 15.0)
    fast = detect.bright_sources(img, 15.0)
    assert fast.fwhm == pytest.approx(4.0, abs=0.5)
    assert fast.fwhm == pytest.approx(full.fwhm, abs=0.3)
    assert fast.background == pytest.approx(100.0, abs=1.0)  # the sky of _frame
    assert fast.background_rms == pytest.approx(5.0, rel=0.1)
    assert not (np.hypot(fast.x - 151, fast.y - 31) < 3).any()  # the 3-px streak
    for x, y in stars:  # true centres are whole pixels
        d = np.hypot(fast.x - x, fast.y - y)
        assert d.min() < 0.3, (x, y, d.min())
    assert len(fast) == len(stars)
    assert np.all(np.diff(fast.flux) <= 0)  # brightest first, as registration expects
