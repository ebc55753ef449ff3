"""Calibration against analytic expectations: master levels, dark scaling, flat division."""

import numpy as np
import pytest
from astropy.io import fits

from tsphot import calibrate


def _write(path, data, **hdr):
    h = fits.Header()
    h["EXPTIME"] = hdr.pop("exptime", 0.0)
    h["DATE-OBS"] = hdr.pop("date", "2020-01-01T00:00:00")
    for k, v in hdr.items():
        h[k] = v
    fits.PrimaryHDU(np.asarray(data, np.float32), header=h).writeto(path)
    return str(path)


def test_dark_scaling_with_exposure_time(tmp_path):
    """A dark rate from 100 s darks, applied to a 30 s frame, removes exactly 30 s of dark."""
    rng = np.random.default_rng(0)
    bias_level, rate = 500.0, 0.2  # ADU, ADU/s
    pattern = rng.normal(0, 3, (64, 64))
    bias = [
        _write(
            tmp_path / f"b{i}.fits",
            bias_level + pattern + rng.normal(0, 2, (64, 64)),
            IMAGETYP="Bias Frame",
        )
        for i in range(9)
    ]
    darks = [
        _write(
            tmp_path / f"d{i}.fits",
            bias_level + pattern + rate * 100 + rng.normal(0, 2, (64, 64)),
            exptime=100.0,
            IMAGETYP="Dark Frame",
        )
        for i in range(9)
    ]
    m = calibrate.build_masters(bias, darks, [], (64, 64))
    assert np.mean(m.bias - (bias_level + pattern)) == pytest.approx(0.0, abs=0.1)
    assert np.mean(m.dark_rate) == pytest.approx(rate, abs=0.002)
    science = bias_level + pattern + rate * 30 + 1000.0
    out = calibrate.apply(science.astype(np.float32), 30.0, m)
    assert np.mean(out) == pytest.approx(1000.0, abs=0.5)
    assert np.std(out) < 1.5  # the column pattern is gone (noise of the masters only)


def test_flat_normalised_and_divides_out(tmp_path):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    flat_true = 1.0 - 0.1 * ((xx - 32) ** 2 + (yy - 32) ** 2) / 32**2
    flats = [
        _write(
            tmp_path / f"f{i}.fits",
            20000 * flat_true * (1 + 0.1 * i) + rng.normal(0, 5, (64, 64)),
            exptime=1.0,
            IMAGETYP="Flat Field",
        )
        for i in range(5)
    ]
    m = calibrate.build_masters([], [], flats, (64, 64))
    assert np.median(m.flat) == pytest.approx(1.0, abs=1e-6)
    ratio = m.flat / (flat_true / np.median(flat_true))
    assert np.std(ratio) < 2e-3
    sky = 300.0 * flat_true
    out = calibrate.apply(sky.astype(np.float32), 1.0, m)
    assert np.std(out) / np.mean(out) < 2e-3


def test_wrong_size_calibration_frame_named(tmp_path):
    b = _write(tmp_path / "small_bias.fits", np.zeros((10, 10)), IMAGETYP="Bias Frame")
    with pytest.raises(calibrate.InputError, match=r"small_bias\.fits"):
        calibrate.build_masters([b], [], [], (64, 64))


def test_combine_median_rejects_outlier():
    frames = [np.full((4, 4), 10.0, np.float32) for _ in range(6)]
    frames[2] = frames[2].copy()
    frames[2][1, 1] = 5000.0  # a cosmic ray in one frame
    out = calibrate.combine(frames, "mean")
    assert out[1, 1] == pytest.approx(10.0)
