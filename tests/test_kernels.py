"""Compiled kernels: the same values as the plain numpy code they replace."""

import numpy as np
import pytest

from tsphot import measure


def _frame(rng, dtype, shape=(160, 200), n_nan=40):
    img = rng.normal(1000.0, 12.0, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(25):  # stars, some in the annuli
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        img += rng.uniform(50, 5e4) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.7**2))
    img[rng.integers(0, shape[0], n_nan), rng.integers(0, shape[1], n_nan)] = np.nan
    img[5, 7] = np.inf
    return img.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masking", ["none", "one radius", "per star"])
def test_ring_stats_equal_the_numpy_reference(dtype, masking):
    rng = np.random.default_rng(7)
    img = _frame(rng, dtype)
    n = 60
    x = rng.uniform(-30, 230, n)  # some off the frame or with the annulus partly off it
    y = rng.uniform(-30, 190, n)
    x[:3] = [np.nan, 100.5, 0.5]  # a missing position, a half-pixel tie, an edge
    y[:3] = [50.0, 80.5, 0.5]
    mxy, mr = None, 0.0
    if masking != "none":
        mxy = np.column_stack([rng.uniform(0, 200, 80), rng.uniform(0, 160, 80)])
        mxy[:10] = np.column_stack([x[10:20] + 0.3, y[10:20]])  # the stars themselves
        mr = 4.0 if masking == "one radius" else rng.uniform(0, 9, 80)
    got = measure.annulus_stats(img, x, y, 6.0, 13.5, mask_xy=mxy, mask_radius=mr)
    ref = measure.annulus_stats_reference(img, x, y, 6.0, 13.5, mask_xy=mxy, mask_radius=mr)
    for key in ("count", "masked"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    for key in ("median", "mean", "mode", "std"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-12, atol=0, err_msg=key)
    assert np.isfinite(got["median"]).sum() > 30 and (got["masked"] > 0).any() == (mxy is not None)


def test_disc_max_equals_the_numpy_reference():
    rng = np.random.default_rng(3)
    img = _frame(rng, np.float32)
    img[60, 60] = -np.inf
    x = np.r_[rng.uniform(-10, 210, 50), np.nan, 60.2]
    y = np.r_[rng.uniform(-10, 170, 50), 3.0, 60.1]
    for data in (img, img.astype(np.float64), rng.random(img.shape) > 0.97):
        got = measure._peak(data, x, y, 5.5)
        ref = measure.peak_reference(data, x, y, 5.5)
        np.testing.assert_array_equal(got, ref)


def _crowded(rng, shape=(220, 260), n=140, fwhm=3.4):
    """A frame of Gaussian stars with close pairs, noise, a NaN column and a saturated star."""
    sig = fwhm / 2.3548
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sx, sy = rng.uniform(-5, shape[1] + 5, n), rng.uniform(-5, shape[0] + 5, n)
    sx[n // 2 :], sy[n // 2 :] = (
        sx[: n - n // 2] + rng.uniform(2, 7, n - n // 2),
        sy[: n - n // 2] + rng.uniform(-4, 4, n - n // 2),
    )  # close neighbours
    flux = 10 ** rng.uniform(2.5, 5.5, n)
    img = rng.normal(300.0, 9.0, shape)
    for f, x0, y0 in zip(flux, sx, sy, strict=True):
        img += f / (2 * np.pi * sig**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sig**2))
    img[:, 37] = np.nan
    img = np.minimum(img, 2e4).astype(np.float32)
    return img, sx, sy


@pytest.mark.parametrize("method", ["com", "windowed"])
def test_recentre_equals_the_numpy_reference(method):
    # predictions off by up to 2.5 px, some off the frame or missing; deblending at work
    rng = np.random.default_rng(11)
    img, sx, sy = _crowded(rng)
    x = np.r_[sx + rng.uniform(-2.5, 2.5, len(sx)), np.nan, 500.0, -3.0]
    y = np.r_[sy + rng.uniform(-2.5, 2.5, len(sy)), 10.0, 50.0, 100.0]
    for fwhm in (3.4, None):
        got = measure.recentre(img, x, y, 11, 3.0, method=method, fwhm=fwhm)
        ref = measure.recentre_reference(img, x, y, 11, 3.0, method=method, fwhm=fwhm)
        np.testing.assert_array_equal(got[2], ref[2])
        # com: the same sums in another order (1e-9 px); windowed: the reference iterates
        # every star until all have converged, the kernel each until its own has (1e-4 px)
        tol = 1e-9 if method == "com" else 2e-4
        np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=tol)
        np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=tol)
        assert got[2].sum() > 60


def test_binning_cell_medians_and_brightest_pixel_equal_numpy():
    # the registration's binned frame, its mesh medians and the brightest pixel near each
    # binned peak: the same values as detect's numpy code
    from tsphot import detect, kernels

    rng = np.random.default_rng(4)
    img, _, _ = _crowded(rng, shape=(203, 258))
    img = np.nan_to_num(img, nan=300.0).astype(np.float32)
    b = 4
    nby, nbx = img.shape[0] // b, img.shape[1] // b
    blk = kernels.bin_mean(img, b)
    assert np.array_equal(blk, detect._bin(img[: nby * b, : nbx * b], b))
    my, mx, sy, sx = 5, 6, 10, 10
    cells = blk[: my * sy, : mx * sx].reshape(my, sy, mx, sx)[:, ::2, :, ::2]
    ref = np.median(cells.transpose(0, 2, 1, 3).reshape(my, mx, -1), axis=2)
    assert np.array_equal(kernels.cell_medians(blk, my, mx, sy, sx), ref)
    img[10, :] = np.nan
    cx = rng.integers(-3, img.shape[1] + 3, 80)
    cy = np.r_[rng.integers(-3, img.shape[0] + 3, 79), 10]
    iy, ix, top = kernels.brightest_near(img, cx, cy, 4)
    win = measure._cutouts(img, cx, cy, 4)
    flat = np.nan_to_num(win, nan=-np.inf).reshape(len(cx), -1).argmax(axis=1)
    assert np.array_equal(iy, cy + flat // 9 - 4) and np.array_equal(ix, cx + flat % 9 - 4)
    np.testing.assert_array_equal(top, win.reshape(len(cx), -1)[np.arange(len(cx)), flat])
