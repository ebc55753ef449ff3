"""Calibration against analytic expectations: master levels, dark scaling, flat division."""

from pathlib import Path

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


# --------------------------------------------------------------------------- against the truth
# A small simulated night with dead and unstable pixels; its calibration frames built into a
# library the way `tsphot calibrate` does (sorted by IMAGETYP, not by file name).


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from tsphot import ingest, synthetic

    root = tmp_path_factory.mktemp("calsim")
    cfg = synthetic.SimConfig(
        n_frames=3, size=(256, 256), n_stars=60, n_dead_pixels=30, n_unstable_pixels=30, seed=5
    )
    truth = synthetic.simulate_night(root, cfg)
    infos = [ingest.read_header(p) for p in ingest.expand_inputs([str(root / "raw")])]
    sci, cal = calibrate.split_by_kind(infos)
    lib = calibrate.build_library(cal, root / "lib")
    nx, ny = cfg.size
    sets = {}
    for name in ("hot_pixels", "dead_pixels", "unstable_pixels"):
        m = np.zeros((ny, nx), bool)
        m[truth.meta[name]["y"], truth.meta[name]["x"]] = True
        sets[name.split("_")[0]] = m
    return {"truth": truth, "lib": lib, "sci": sci, "cal": cal, **sets}


def _master(sim, kind):
    lib = sim["lib"]
    (entry,) = lib.of_type(kind)
    return calibrate.read_master(lib.path(entry), None)


def test_library_sorted_by_header_not_name(sim):
    """25 calibration frames in one folder with the science: each goes to its master."""
    cfg = sim["truth"].config
    assert len(sim["sci"]) == cfg.n_frames
    assert len(sim["cal"]) == cfg.n_bias + cfg.n_dark + cfg.n_flat
    n = {e["type"]: e["n_frames"] for e in sim["lib"].entries}
    assert n == {"bias": cfg.n_bias, "dark": cfg.n_dark, "flat": cfg.n_flat, "bpm": 0}
    dark = sim["lib"].of_type("dark")[0]
    assert (dark["exptime"], dark["ccd_temp"], dark["night"]) == (60.0, -10.0, "2017-12-19")


def test_master_bias_recovers_true_bias(sim):
    """Master bias − true bias: mean 0 and the noise of a median of N frames."""
    cfg, maps = sim["truth"].config, sim["truth"].maps()
    res = (_master(sim, "bias") - maps["BIAS_COLUMNS"][None, :])[~sim["unstable"]]
    # one frame: read noise and 16-bit rounding; a median of N=10 Gaussian values has ~1.18
    # times the noise of their mean; the clipping costs a little more
    sigma_mean = np.sqrt((cfg.read_noise / cfg.gain) ** 2 + 1 / 12) / np.sqrt(cfg.n_bias)
    assert abs(res.mean()) < 5 * sigma_mean / np.sqrt(res.size)
    assert 1.1 < res.std() / sigma_mean < 1.35


def test_master_dark_recovers_true_dark_current(sim):
    """Master dark − true dark (ADU at 60 s) within the noise; every hot pixel's rate within 5σ."""
    cfg, maps = sim["truth"].config, sim["truth"].maps()
    g, t = cfg.gain, cfg.exptime
    true = maps["DARK_RATE"] * t / g
    res = _master(sim, "dark") - true
    bias_res = (_master(sim, "bias") - maps["BIAS_COLUMNS"][None, :])[~sim["unstable"]]
    normal = ~sim["hot"] & ~sim["unstable"]
    var1 = (maps["DARK_RATE"] * t + cfg.read_noise**2) / g**2 + 1 / 12  # one dark frame
    sigma = np.sqrt(var1 / cfg.n_dark + bias_res.var())
    z = res / sigma
    assert abs(z[normal].mean()) < 5 / np.sqrt(normal.sum())
    assert 0.95 < z[normal].std() < 1.2  # a clipped mean of 5 frames is nearly a mean
    assert np.all(np.abs(z[sim["hot"]]) < 5)  # 120 to 18000 e- of dark, recovered within noise


def test_master_flat_recovers_true_flat(sim):
    """Master flat (median 1) − true flat (median 1): the noise of a median of 10 flats."""
    truth = sim["truth"]
    cfg, maps = truth.config, truth.maps()
    true = maps["FLAT"] / np.median(maps["FLAT"])
    res = _master(sim, "flat") - true
    normal = ~sim["hot"] & ~sim["unstable"] & ~sim["dead"]
    levels = np.array(truth.meta["flat"]["levels_e"])
    sigma_mean = np.sqrt(np.mean(1 / levels) / true) / np.sqrt(cfg.n_flat)  # photon noise
    z = res / sigma_mean
    assert abs(res[normal].mean()) < 1e-4
    assert 1.1 < z[normal].std() < 1.35  # median of 10: ~1.18 x the mean's noise


def test_calibrated_frame_matches_true_sky(sim):
    """Calibrated frame − true sky, away from stars, cosmic rays and bad pixels, divided by
    the photon, read, rounding and master noise: mean 0, standard deviation 1."""
    import math

    from scipy.ndimage import binary_dilation

    from tsphot.ingest import read_pixels

    truth, lib = sim["truth"], sim["lib"]
    cfg, maps = truth.config, truth.maps()
    nx, ny = cfg.size
    g = cfg.gain
    info = sim["sci"][1]
    k = int(info.path[-9:-5])
    choice = calibrate.select_masters(lib, info)
    raw, _ = read_pixels(info.path, info.pedestal)
    cal, steps = calibrate.calibrate_frame(raw, info, calibrate.masters_for(lib, choice))
    assert [s["step"] for s in steps] == ["subtract_bias", "subtract_dark", "flat_correct"]
    assert choice["dark"]["scale"] == 1.0

    cx, cy = truth.meta["frame_centre"]
    sk = truth.meta["sky"]
    ang = math.radians(sk["gradient_angle_deg"])
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    plane = 1 + sk["gradient"] * ((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang))
    plane = 1 + (plane - 1) / sk["extent_px"]
    flat = maps["FLAT"]
    # The master flat has median 1, the true one mean 1: the calibrated sky is in units of the
    # median pixel's response.
    sky = truth.exposures["sky_e_per_pix_centre"][k] * plane * np.median(flat)
    keep = ~(sim["hot"] | sim["unstable"] | sim["dead"])
    alpha = 4.6 / (2 * np.sqrt(2 ** (1 / 3) - 1))  # Moffat beta = 3, FWHM <= 4.6 px
    for row in truth.frames[truth.frames["frame"] == k]:
        peak = row["flux_e"] / (np.pi * alpha**2 / 2)
        r = max(8.0, alpha * (max(peak, 1.0) / 3.0) ** (1 / 6))  # wing below 3 e-
        keep &= (xx - row["x"]) ** 2 + (yy - row["y"]) ** 2 > r * r
    cos = truth.cosmics[truth.cosmics["frame"] == k]
    hit = np.zeros((ny, nx), bool)
    hit[cos["y"], cos["x"]] = True
    keep &= ~binary_dilation(hit, iterations=2)
    assert keep.sum() > 20000

    bias_var = (_master(sim, "bias") - maps["BIAS_COLUMNS"][None, :])[keep].var()
    dark_var = (_master(sim, "dark") - maps["DARK_RATE"] * cfg.exptime / g)[keep].var()
    flat_rel = (_master(sim, "flat") - flat / np.median(flat))[keep].std()
    dark_e = maps["DARK_RATE"] * cfg.exptime
    var = (flat * sky + dark_e + cfg.read_noise**2 + g * g / 12) / flat**2
    var += (bias_var + dark_var) * g * g / flat**2 + (sky * flat_rel) ** 2
    z = ((cal * g - sky) / np.sqrt(var))[keep]
    assert abs(z.mean()) < 0.03
    assert 0.97 < z.std() < 1.03


def test_bad_pixel_mask_matches_truth(sim):
    """Every hot, dead and unstable pixel of the simulator is in the mask, and nothing else."""
    bpm = _master(sim, "bpm").astype(np.uint8)
    hot = (bpm & calibrate.HOT) > 0
    dead = (bpm & calibrate.DEAD) > 0
    unstable = (bpm & calibrate.UNSTABLE) > 0
    assert np.array_equal(hot, sim["hot"])
    assert np.array_equal(dead, sim["dead"])
    # a two-level pixel can sit in one state through all 10 biases (2 in 1024); allow a miss
    assert (unstable & sim["unstable"]).sum() >= 0.9 * sim["unstable"].sum()
    assert not (unstable & ~sim["unstable"]).any()


def test_hot_pixel_under_aperture_is_flagged(sim):
    """measure_stars flags a star whose aperture holds a hot pixel, and not one beside it."""
    from tsphot import measure

    bpm = _master(sim, "bpm").astype(np.uint8)
    hx, hy = sim["truth"].meta["hot_pixels"]["x"][0], sim["truth"].meta["hot_pixels"]["y"][0]
    data = np.full(bpm.shape, 100.0, np.float32)
    aps = measure.Apertures((4.0,), (8.0, 12.0))
    x = np.array([hx + 2.5, hx + 6.0], float)
    y = np.array([hy, hy], float)
    bad = np.zeros_like(bpm)
    bad[hy, hx] = bpm[hy, hx]
    m = measure.measure_stars(data, x, y, aps, 1.6, bad_mask=bad)
    assert m["bad_pixel"].tolist() == [True, False]


def test_choice_rules():
    """Nearest night, same filter and binning; a dark of another exposure is scaled."""
    from tsphot.ingest import FrameInfo

    def e(kind, jd, **kw):
        base = {"type": kind, "file": f"{kind}{jd}{kw}", "binning": [1, 1], "shape": [64, 64]}
        base.update(jd=jd, night="", exptime=kw.pop("exptime", 0.0), filter="", ccd_temp=None)
        base.update(kw)
        return base

    lib = calibrate.Library(
        folder=Path("."),
        entries=[
            e("bias", 10.0),
            e("bias", 12.0),
            e("bias", 11.9, binning=[2, 2]),
            e("dark", 10.0, exptime=180.0, ccd_temp=-20.0),
            e("dark", 12.0, exptime=240.0, ccd_temp=-19.0),
            e("dark", 12.0, exptime=30.0, ccd_temp=-19.0),
            e("flat", 9.0, filter="V"),
            e("flat", 11.8, filter="R"),
        ],
    )
    f = FrameInfo(path="x", jd_utc_mid=11.95, exptime=240.0, filter="v", shape=(64, 64))
    f.ccd_temp = -19.0
    c = calibrate.select_masters(lib, f)
    assert c["bias"]["file"] == "bias12.0{}"  # 2x2 bias is nearer in time but other binning
    assert c["dark"]["scale"] == 1.0 and c["dark"]["exptime"] == 240.0
    assert c["flat"]["file"].startswith("flat9.0")  # the only V flat, though older
    f.exptime = 120.0
    c = calibrate.select_masters(lib, f)
    assert c["dark"]["exptime"] == 240.0 and c["dark"]["scale"] == pytest.approx(0.5)
    assert "scaled" in c["dark"]["why"]
    f.filter = "B"
    c = calibrate.select_masters(lib, f)
    assert c["flat"]["file"] is None and "'B'" in c["flat"]["why"]
    f.binning = (3, 3)
    assert calibrate.select_masters(lib, f)["bias"]["file"] is None


def test_combine_stays_within_memory_budget(tmp_path):
    """100 flats of 256x256 (26 MB as float32) combined with a 4 MB budget, in chunks."""
    import tracemalloc

    from tsphot.ingest import read_header

    rng = np.random.default_rng(3)
    truth = 1.0 + 0.05 * np.sin(np.arange(256) / 20.0)[None, :] * np.ones((256, 1))
    paths = []
    for i in range(100):
        level = 10000.0 * (1 + 0.003 * i)
        img = level * truth + rng.normal(0, 100.0, (256, 256))
        paths.append(_write(tmp_path / f"f{i:03d}.fits", img, exptime=1.0, IMAGETYP="FLAT"))
    infos = [read_header(p) for p in paths]
    tracemalloc.start()
    flat = calibrate.make_flat(infos, None, None, memory_mb=4.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 12 * 2**20  # all frames at once would be 26 MB, before any working copy
    expected = truth / np.median(truth)
    # per pixel: 1 % noise per frame, median of 100 -> ~0.125 %
    assert np.std(flat - expected) < 0.0016


def test_overscan_subtracted_and_trimmed(tmp_path):
    """A row-dependent overscan level is removed and the frame trimmed to TRIMSEC."""
    rng = np.random.default_rng(4)
    ny, nx = 50, 70
    level = 400.0 + 0.5 * np.arange(ny)  # the readout level drifts down the frame
    img = level[:, None] + rng.normal(0, 2.0, (ny, nx))
    img[:, :60] += 1000.0  # the image area; columns 61-70 are overscan
    p = _write(
        tmp_path / "o.fits",
        img,
        exptime=10.0,
        BIASSEC="[62:70,1:50]",
        DATASEC="[1:60,1:50]",
        TRIMSEC="[3:58,2:49]",
    )
    from tsphot.ingest import read_header, read_pixels

    info = read_header(p)
    raw, _ = read_pixels(p)
    out, steps = calibrate.calibrate_frame(raw, info, calibrate.Masters())
    assert out.shape == (48, 56)
    assert [s["step"] for s in steps] == ["subtract_overscan", "trim"]
    assert abs(out.mean() - 1000.0) < 0.3
    assert np.abs(out.mean(axis=1) - 1000.0).max() < 1.5  # no gradient left
    with pytest.raises(calibrate.InputError, match=r"o\.fits.*\[1:99"):
        info.sections["TRIMSEC"] = "[1:99,1:50]"
        calibrate.calibrate_frame(raw, info, calibrate.Masters())


def test_saved_calibrated_frame_carries_provenance(sim, tmp_path):
    """--save-calibrated: float32 pixels and every step, with its arguments, in the header."""
    from tsphot.ingest import read_pixels

    lib, info = sim["lib"], sim["sci"][0]
    choice = calibrate.select_masters(lib, info)
    raw, header = read_pixels(info.path)
    data, steps = calibrate.calibrate_frame(
        raw, info, calibrate.masters_for(lib, choice), linearity_limit=50000.0
    )
    out = calibrate.write_calibrated(tmp_path / "c.fits", data, header, steps)
    with fits.open(out) as h:
        hdr = h[0].header
        assert h[0].data.dtype.kind == "f"
        assert np.allclose(h[0].data, data)
    assert hdr["CALSTAT"] == "BDF"
    assert "bias_1x1" in hdr["SUBBIAS"] and "scale=1.0" in hdr["SUBDARK"]
    assert "flat_V" in hdr["FLATCOR"] and "limit_adu=50000.0" in hdr["NONLIN"]
    history = "".join(str(c) for c in hdr["HISTORY"])
    assert '"step":"subtract_dark"' in history and "BZERO" not in hdr


def test_lacosmic_removes_true_cosmic_rays(sim):
    """L.A.Cosmic (astroscrappy) finds the simulated hits and leaves the stars' flux alone."""
    from tsphot.ingest import read_pixels

    truth, lib = sim["truth"], sim["lib"]
    cfg = truth.config
    info = sim["sci"][2]
    k = int(info.path[-9:-5])
    masters = calibrate.masters_for(lib, calibrate.select_masters(lib, info))
    raw, _ = read_pixels(info.path)
    plain, _ = calibrate.calibrate_frame(raw, info, masters)
    clean, steps = calibrate.calibrate_frame(
        raw, info, masters, lacosmic=True, gain=cfg.gain, read_noise=cfg.read_noise
    )
    assert steps[-1]["step"] == "cosmicray_lacosmic"
    hits = truth.cosmics[(truth.cosmics["frame"] == k) & (truth.cosmics["electrons"] > 1000)]
    assert len(hits) > 0
    fixed = np.abs(clean[hits["y"], hits["x"]] - plain[hits["y"], hits["x"]]) > 0
    assert fixed.mean() > 0.8
    # bright unsaturated stars: their 12 px sum changes by less than 0.2 %
    rows = truth.frames[(truth.frames["frame"] == k) & ~truth.frames["saturated"]]
    rows = rows[rows["flux_e"] > 2e5]
    yy, xx = np.mgrid[0 : cfg.size[1], 0 : cfg.size[0]]
    for r in rows:
        inside = (xx - r["x"]) ** 2 + (yy - r["y"]) ** 2 <= 144
        if inside.sum() < 400:
            continue  # at the edge
        a, b = plain[inside].sum(), clean[inside].sum()
        assert abs(b - a) < 0.002 * r["flux_e"] / cfg.gain + 5 * 100


def test_masters_any_bad_follows_the_mask():
    # measuring skips the per-star bad-pixel lookup when the mask flags nothing
    m = calibrate.Masters()
    assert m.any_bad is False
    m.bad = np.zeros((4, 5), np.uint8)
    assert m.any_bad is False
    m.bad = m.bad.copy()
    m.bad[2, 3] = 1
    assert m.any_bad is True
