"""Period search against simulated light curves with known periods: coverage over seeds."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from astropy.table import QTable

from seedpool import map_seeds
from tsphot import cli
from tsphot import period as pm
from tsphot.products import alcdef

SIG = 0.01  # per-point noise (mag)


def _nights(rng, n_nights, span, n_pts, gap=1.0, start=0.0):
    return [start + k * gap + np.sort(rng.uniform(0, span, n_pts)) for k in range(n_nights)]


def _series(ts, signal, rng, offsets=None):
    offsets = offsets if offsets is not None else [0.05 * k for k in range(len(ts))]
    ms = [12 + offsets[k] + signal(t) + rng.normal(0, SIG, t.size) for k, t in enumerate(ts)]
    return pm.make_series(ts, ms, [np.full(t.size, SIG) for t in ts])


def sinusoid(seed, amp_ratio=3.0):
    """One night, several cycles; peak-to-peak amplitude amp_ratio × the per-point noise."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.2)
    a, ph = amp_ratio * SIG / 2, rng.uniform(0, 2 * np.pi)
    s = _series(_nights(rng, 1, 0.4, 150), lambda t: a * np.sin(2 * np.pi * t / p + ph), rng)
    return s, p


def asteroid(seed, amp_ratio=3.0):
    """Three nights of a bimodal rotation curve (two unequal maxima), free zero points."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.1, 0.2)
    a, ph = amp_ratio * SIG / 2, rng.uniform(0, 2 * np.pi)

    def f(t):
        x = 2 * np.pi * t / p
        return a * (np.cos(2 * x + ph) + 0.3 * np.cos(x) + 0.2 * np.sin(3 * x))

    offsets = rng.uniform(-1, 1, 3)  # nights on unrelated comparison stars
    return _series(_nights(rng, 3, 0.25, 80), f, rng, offsets), p


def eclipsing(seed, amp_ratio=3.0):
    """Six nights of a detached binary: V-shaped primary eclipse of depth amp_ratio × noise."""
    rng = np.random.default_rng(seed)
    depth = amp_ratio * SIG
    ts = _nights(rng, 6, 0.4, 100)
    t = np.concatenate(ts)
    while True:  # draw until at least three eclipse minima fall inside the nights
        p, t0 = rng.uniform(0.4, 1.0), rng.uniform(0, 1)
        ph = ((t - t0) / p + 0.5) % 1 - 0.5
        if len(np.unique(np.round((t - t0) / p)[np.abs(ph) < 0.02])) >= 3:
            break

    def f(t):
        ph = ((t - t0) / p + 0.5) % 1 - 0.5
        return depth * np.clip(1 - np.abs(ph) / 0.05, 0, None)

    return _series(ts, f, rng), p


def transit(seed, amp_ratio=3.0):
    """Eight nights of a planetary transit: flat bottom of depth amp_ratio × noise, 20 % ramps."""
    rng = np.random.default_rng(seed)
    depth = amp_ratio * SIG
    ts = _nights(rng, 8, 0.45, 120)
    t = np.concatenate(ts)
    while True:  # draw until at least three transits are covered at mid-time
        p, t0, dur = rng.uniform(0.8, 2.5), rng.uniform(0, 2.5), rng.uniform(0.06, 0.12)
        ph = ((t - t0) / p + 0.5) % 1 - 0.5
        if len(np.unique(np.round((t - t0) / p)[np.abs(ph) * p < 0.01])) >= 3:
            break

    def f(t):
        dt = np.abs(((t - t0) / p + 0.5) % 1 - 0.5) * p
        return depth * np.clip((dur / 2 - dt) / (0.2 * dur), 0, 1)

    return _series(ts, f, rng), p


def _trial(seed, make, method, order, lo, hi):
    """One seed's search: (z, None) or, where another peak won, (None, its alias pick)."""
    s, p = make(seed)
    r = pm.find_period(s, method, lo, hi, order=order)
    zi = (r.period - p) / r.period_err
    # the truth on a minimum of its own that the search lists (within 3 of its errors)
    on_alias = any(
        abs(a.period - p) < 3 * a.period_err and a.delta_chi2 < pm.ALIAS_THRESHOLD
        for a in r.aliases
    )
    if abs(zi) > 5 or (abs(zi) > 3 and on_alias):  # another peak won: it must say so
        listed = any(abs(a.period - p) < max(0.01 * p, 5 * a.period_err) for a in r.aliases)
        return None, (seed, r.aliases_unresolved, listed)
    return zi, None


def _coverage(make, method, seeds, order=1, lo=0.02, hi=1.0):
    """Fraction of non-alias results within 1 sigma, the alias picks, and all |z|."""
    trials = map_seeds(
        functools.partial(_trial, make=make, method=method, order=order, lo=lo, hi=hi), seeds
    )
    z = np.array([zi for zi, _ in trials if zi is not None])
    alias_picks = [pick for _, pick in trials if pick is not None]
    return float(np.mean(np.abs(z) < 1)), alias_picks, z


def test_lomb_scargle_coverage_on_sinusoids():
    frac, picks, z = _coverage(sinusoid, "ls", range(40))
    assert not picks, f"LS picked a wrong peak on clean single-night data: {picks}"
    # 68 % nominal; 40 trials give a binomial sigma of 7 %
    assert 0.53 <= frac <= 0.85, f"coverage {frac:.2f}, |z| = {np.round(np.abs(z), 2)}"
    assert np.max(np.abs(z)) < 4


def test_fourier_coverage_on_asteroid_rotation_with_free_zero_points():
    frac, picks, z = _coverage(asteroid, "fourier", range(24), order=4, lo=0.05, hi=0.5)
    # the Fourier method cannot always tell P from 2P (one or two maxima per cycle); such
    # picks must be rare and must carry the true period among the listed aliases
    assert len(picks) <= 4, picks
    assert all(unresolved and listed for _, unresolved, listed in picks), picks
    assert 0.5 <= frac <= 0.88, f"coverage {frac:.2f}, |z| = {np.round(np.abs(z), 2)}"
    assert np.max(np.abs(z)) < 4


def test_bls_recovers_eclipsing_binaries_within_error():
    frac, picks, z = _coverage(eclipsing, "bls", range(6), lo=0.3, hi=1.5)
    assert all(unres and listed for _, unres, listed in picks), picks
    assert len(z) >= 4
    assert np.max(np.abs(z)) < 3.5, np.round(z, 2)
    assert frac >= 0.5


@pytest.mark.heavy
def test_bls_coverage_on_eclipsing_binaries():
    frac, picks, z = _coverage(eclipsing, "bls", range(40), lo=0.3, hi=1.5)
    assert all(unres and listed for _, unres, listed in picks), picks
    assert 0.5 <= frac <= 0.88, f"coverage {frac:.2f}, |z| = {np.round(np.abs(z), 2)}"


def test_bls_recovers_transits_within_error():
    _, picks, z = _coverage(transit, "bls", range(6), lo=0.5, hi=3.0)
    assert all(unres and listed for _, unres, listed in picks), picks
    assert len(z) >= 4
    assert np.max(np.abs(z)) < 3.5, np.round(z, 2)


@pytest.mark.heavy
def test_bls_coverage_on_transits():
    """Transits of depth 3× the per-point noise: the period within its 1-sigma error 68 % of
    the time (40 seeds: binomial sigma 7 %), other peaks only when said and listed.
    Measured 2026-11-23: 19 of 38 (50 %, at the bound), max |z| 2.8, two listed alias picks."""
    frac, picks, z = _coverage(transit, "bls", range(40), lo=0.5, hi=3.0)
    assert all(unres and listed for _, unres, listed in picks), picks
    assert len(picks) <= 4, picks
    assert 0.5 <= frac <= 0.88, f"coverage {frac:.2f}, |z| = {np.round(np.abs(z), 2)}"


def test_bls_finds_a_transit_with_ingress():
    rng = np.random.default_rng(5)
    p, t0, dur = 1.3, 0.35, 0.09

    def f(t):
        dt = np.abs(((t - t0) / p + 0.5) % 1 - 0.5) * p
        return 0.012 * np.clip((dur / 2 - dt) / (0.2 * dur), 0, 1)  # flat bottom, 20 % ramps

    s = _series(_nights(rng, 8, 0.45, 120), f, rng)
    r = pm.find_period(s, "bls", 0.5, 3.0)
    assert abs(r.period - p) < 3 * r.period_err, (r.period, r.period_err)
    assert r.params["shape"] == "trapezoid"
    assert r.params["depth_mag"] == pytest.approx(0.012, abs=4 * r.params["depth_mag_err"])


def test_false_alarm_probability_is_honest_on_noise():
    small = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        s = _series(_nights(rng, 1, 0.4, 150), lambda t: 0 * t, rng)
        r = pm.find_period(s, "ls", 0.02, 1.0)
        small += r.fap < 0.05
    assert small <= 3  # Baluev's bound is conservative: at most 5 % expected (1 of 20)
    s, _ = sinusoid(1)
    assert pm.find_period(s, "ls", 0.02, 1.0).fap < 1e-6


def test_zero_points_are_fitted_with_the_period():
    s, _ = asteroid(3)
    r1 = pm.find_period(s, "fourier", 0.05, 0.5, order=4)
    shifted = pm.Series(s.t, s.mag + np.array([3.0, -2.0, 0.7])[s.night], s.err, s.night)
    r2 = pm.find_period(shifted, "fourier", 0.05, 0.5, order=4)
    assert r2.period == pytest.approx(r1.period, rel=1e-9)
    zp = np.array(r2.params["zero_points"]) - np.array(r1.params["zero_points"])
    assert zp == pytest.approx([3.0, -2.0, 0.7], abs=1e-8)


def test_aliases_listed_when_nights_are_too_far_apart():
    rng = np.random.default_rng(7)
    p = 0.149
    ts = _nights(rng, 2, 0.06, 12, gap=5.0)  # two short nights five days apart, like 2713
    s = _series(ts, lambda t: 0.2 * np.cos(4 * np.pi * t / p), rng)
    r = pm.find_period(s, "fourier", 0.1, 0.2, order=2)
    assert r.aliases_unresolved
    assert any("cannot separate aliases" in n for n in r.notes)
    found = [r.period] + [a.period for a in r.aliases if a.delta_chi2 < pm.ALIAS_THRESHOLD]
    assert min(abs(np.array(found) - p)) < 0.002


def test_asteroid_correction_values():
    t, m = pm.asteroid_correct(np.array([10.0]), np.array([15.0]), 2.0, 1.5)
    assert t[0] == pytest.approx(10.0 - 1.5 * 499.004784 / 86400, abs=1e-9)  # 1 au = 499.005 s
    assert m[0] == pytest.approx(15.0 - 5 * np.log10(3.0))
    assert pm.hg_phase_mag(0.0) == pytest.approx(0.0, abs=1e-12)
    # H,G with G = 0.15 grows with phase (opposition surge), 0.65 mag at 10 deg
    h = pm.hg_phase_mag(np.array([5.0, 10.0, 20.0]))
    assert np.all(np.diff(h) > 0)
    # by hand: tan(5°)=0.08749, Φ1=exp(-3.33·0.08749^0.63)=0.4878, Φ2=exp(-1.87·0.08749^1.22)=0.9087
    assert h[1] == pytest.approx(-2.5 * np.log10(0.85 * 0.4878 + 0.15 * 0.9087), abs=2e-3)


def test_light_time_and_distance_correction_recover_the_period():
    """Two nights 10 d apart while the asteroid recedes by 0.3 au: ~150 s of light time."""
    rng = np.random.default_rng(11)
    p = 0.125  # 3 h
    t_ast = _nights(rng, 2, 0.3, 200, gap=10.0, start=2458400.0)  # on the asteroid's clock
    geo = [(2.2, 1.3, 8.0), (2.25, 1.6, 12.0)]
    ts, ms, es = [], [], []
    for (r_au, d_au, ph), t in zip(geo, t_ast, strict=True):
        curve = 0.15 * np.cos(4 * np.pi * t / p) + 0.04 * np.cos(2 * np.pi * t / p)
        true_mag = 14 + curve + 5 * np.log10(r_au * d_au) + pm.hg_phase_mag(ph)
        ts.append(t + d_au * pm.LIGHT_DAYS_PER_AU)  # when the light reached the observer
        ms.append(true_mag + rng.normal(0, SIG, t.size))
        es.append(np.full(t.size, SIG))
    corr = [pm.asteroid_correct(t, m, *g) for t, m, g in zip(ts, ms, geo, strict=True)]
    s_c = pm.make_series([c[0] for c in corr], [c[1] for c in corr], es)
    s_c.night[:] = 0  # one shared zero point: only the corrections can join the nights
    r = pm.find_period(s_c, "fourier", 0.1, 0.15, order=4)
    assert abs(r.period - p) < 3 * r.period_err
    assert r.chi2_red < 1.3
    s_raw = pm.make_series(ts, ms, es)  # uncorrected times, free zero points
    r_raw = pm.find_period(s_raw, "fourier", 0.1, 0.15, order=4)
    assert abs(r_raw.period - p) > 3 * r_raw.period_err  # the light time shows


def test_parse_period_units():
    assert pm.parse_period("3.5h") == pytest.approx(3.5 / 24)
    assert pm.parse_period("90m") == pytest.approx(90 / 1440)
    assert pm.parse_period("90min") == pytest.approx(90 / 1440)
    assert pm.parse_period("2d") == pytest.approx(2.0)
    assert pm.parse_period("2") == pytest.approx(2 / 24)  # bare numbers are hours
    with pytest.raises(pm.PeriodError, match="not a number"):
        pm.parse_period("three hours")


def test_too_few_points_and_bad_range_are_clear():
    s = pm.make_series([np.arange(5.0)], [np.zeros(5)], [np.ones(5)])
    with pytest.raises(pm.PeriodError, match="too few"):
        pm.find_period(s, "fourier", 0.1, 1.0, order=4)
    s, _ = sinusoid(0)
    with pytest.raises(pm.PeriodError, match="min < max"):
        pm.find_period(s, "ls", 1.0, 0.5)


# ------------------------------------------------------------------ command line and products


def _write_run(folder, name, t, mag, err, jd_offset=0.0):
    folder.mkdir(parents=True)
    tab = QTable()
    tab["BJD_TDB"] = t + jd_offset
    tab["JD_UTC"] = t
    tab["rel_flux"] = 10 ** (-0.4 * mag)
    tab["rel_flux_err"] = err
    tab["diff_mag"] = mag
    tab["diff_mag_err"] = err
    tab["airmass"] = np.linspace(1.8, 1.2, t.size)
    tab["valid"] = np.ones(t.size, bool)
    tab["status"] = ["ok"] * t.size
    tab.write(folder / f"lightcurve_{name}.ecsv", format="ascii.ecsv")
    rec = {"settings": {"site": [42.61, -71.485, 100.0]}, "comparison_stars": [{"used": True}] * 5}
    (folder / "run.json").write_text(json.dumps(rec))


def test_cli_period_writes_products_and_valid_alcdef(tmp_path, capsys):
    rng = np.random.default_rng(2)
    p = 0.1492  # 3.58 h
    runs = []
    for k, start in enumerate((2458404.58, 2458409.62)):
        t = np.sort(start + rng.uniform(0, 0.22, 60))
        mag = 0.25 * np.cos(4 * np.pi * t / p) + 0.3 * k + rng.normal(0, SIG, t.size)
        _write_run(tmp_path / f"night{k + 1}", "2713", t, mag, np.full(t.size, SIG))
        runs.append(str(tmp_path / f"night{k + 1}"))
    out = tmp_path / "per"
    code = cli.main(
        ["period", *runs, "--object", "2713", "--method", "fourier", "--order", "4",
         "--min", "2h", "--max", "6h", "--out", str(out), "--geometry", "2.1,1.2,9.5",
         "--geometry", "2.11,1.18,8.0", "--alcdef", "--alcdef-meta", "OBJECTNUMBER=2713",
         "--alcdef-meta", "OBJECTNAME=Luxembourg", "--alcdef-meta", "CONTACTNAME=A. Observer",
         "--alcdef-meta", "CONTACTINFO=[obs@example.org]", "--alcdef-meta", "OBSERVERS=A. Observer",
         "--alcdef-meta", "FILTER=C", "--alcdef-meta", "MAGBAND=R"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for f in ("periodogram.png", "periodogram.ecsv", "phased.png", "phased.ecsv", "period.json"):
        assert (out / f).is_file(), f
    rec = json.loads((out / "period.json").read_text())
    found = [rec["period_d"]] + [a["period_d"] for a in rec["aliases"]]
    assert min(abs(np.array(found) - p)) < 3 * rec["period_err_d"] + 1e-4
    assert rec["time_system"].startswith("JD_UTC minus light time")
    text = (out / "alcdef_2713.txt").read_text()
    assert alcdef.validate(text) == []
    assert text.count("STARTMETADATA") == 2 and text.count("ENDDATA") == 2
    assert "OBSLONGITUDE=-71.4850" in text and "PHASE=+9.50" in text


def test_cli_period_names_missing_object(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 0.2, 30)) + 2458000
    _write_run(tmp_path / "run", "T1", t, np.zeros(30), np.full(30, SIG))
    code = cli.main(["period", str(tmp_path / "run"), "--object", "WASP"])
    err = capsys.readouterr().err
    assert code == 2
    assert "lightcurve_WASP.ecsv" in err and "T1" in err


# ------------------------------------------------------------------ ALCDEF rules, line by line

META = {
    "OBJECTNUMBER": "2713",
    "OBJECTNAME": "Luxembourg",
    "CONTACTNAME": "A. Observer",
    "CONTACTINFO": "[obs@example.org]",
    "OBSERVERS": "A. Observer",
    "FILTER": "C",
    "MAGBAND": "R",
    "OBSLONGITUDE": "-71.4850",
    "OBSLATITUDE": "+42.6100",
}


def _good_text():
    jd = 2458404.59 + np.arange(10) * 0.003
    s = alcdef.Session(jd, np.linspace(0, 0.1, 10), np.full(10, 0.01), np.linspace(2, 1.5, 10), 9.5)
    return alcdef.write_text(META, [s, s])


def test_alcdef_written_file_obeys_every_rule():
    text = _good_text()
    assert alcdef.validate(text) == []
    lines = text.splitlines()
    assert lines[0] == "STARTMETADATA" and lines[-1] == "ENDDATA"
    for line in lines:
        assert len(line) <= 255 and line.isascii() and line.strip()
        assert line in ("STARTMETADATA", "ENDMETADATA", "ENDDATA") or "=" in line
    data = [ln for ln in lines if ln.startswith("DATA=")]
    assert len(data) == 20
    assert all(len(d[5:].split("|")) == 4 for d in data)


def test_alcdef_database_export_passes():
    """A block in the form the ALCDEF database itself exports (after its (1) Ceres file)."""
    text = "\n".join(
        [
            "STARTMETADATA", "REVISEDDATA=FALSE", "ALLOWSHARING=TRUE", "SUBMITPDS=TRUE",
            "LCBLOCKID=1", "OBJECTNUMBER=1", "OBJECTNAME=Ceres", "MPCDESIG= ",
            "SESSIONDATE=2011-09-13", "SESSIONTIME=07:46:00", "CONTACTNAME=R. D. Stephens",
            "CONTACTINFO=[rds@example.com] Rancho Cucamonga", "OBSERVERS=R. D. Stephens",
            "OBSLONGITUDE=-116.38361", "OBSLATITUDE=+34.29111", "EXPJD=MID", "OBJECTRA=00:04.2",
            "OBJECTDEC=-16 55", "EPOCH=J2000.0", "PHASE=+5.49", "PABL=+353.4", "PABB=-13.2",
            "FILTER=R", "MAGBAND=R", "CICORRECTION=FALSE", "CIBAND=", "DIFFERMAGS=FALSE",
            "STANDARD=NONE", "LTCAPP=NONE", "REDUCEDMAGS=NONE", "DELIMITER=PIPE",
            "COMPNAME1=000445.58 -165021.3", "COMPMAG1=+7.091", "ENDMETADATA",
            "DATA=2455817.735937|7.328|0.004", "DATA=2455817.912499|7.325|0.003", "ENDDATA",
        ]
    )  # fmt: skip
    assert alcdef.validate(text + "\n") == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("SESSIONTIME=", "SESSIONTIME=7", "HH:MM:SS"),
        ("DIFFERMAGS=TRUE", "DIFFERMAGS=YES", "TRUE or FALSE"),
        ("OBJECTNUMBER=2713", "OBJECTNUMBER=2713a", "whole number"),
        ("CONTACTINFO=[obs@example.org]", "CONTACTINFO=obs at example", "square brackets"),
        ("STANDARD=NONE", "STANDARD=CATALOG", "NONE, INTERNAL or TRANSFORMED"),
        ("LTCAPP=NONE", "LTCAPP=AVERAGE", "needs LTCDAYS"),
        ("REDUCEDMAGS=NONE", "REDUCEDMAGS=AVERAGE", "needs UCORMAG"),
        ("DELIMITER=PIPE", "DELIMITER=COMMA", "PIPE or TAB"),
        ("OBSLONGITUDE=-71.4850", "OBSLONGITUDE=288.5", "decimal degrees"),
        ("OBSLATITUDE=+42.6100", "OBSLATITUDE=42.61", "sign"),
        ("PHASE=+9.50", "PHASE=+9.50\nCOMMENT=see http://example.org", "web address"),
        ("OBSERVERS=A. Observer", "OBSERVERS=A. Observer\nFOO=1", "unknown keyword"),
        ("OBSERVERS=A. Observer", "OBSERVERS=A. Observer\nOBSERVERS=B", "twice"),
        ("MAGBAND=R\n", "", "lacks required keyword MAGBAND"),
        ("OBJECTNAME=Luxembourg", "OBJECTNAME=Lux\u00e9mbourg", "non-ASCII"),
        ("OBJECTNAME=Luxembourg", "OBJECTNAME=" + "L" * 260, "more than 255"),
        ("ENDMETADATA\n", "ENDMETADATA\n\n", "blank line"),
        ("|0.0100|", "|-0.0100|", "MAGERR must be positive"),
        ("DATA=2458404.590000", "DATA=58404.590000", "full Julian date"),
        ("|2.000\n", "|2.000|7\n", "JD|MAG|MAGERR"),
        ("|+0.0000|", "|abc|", "must be numbers"),
        ("ENDDATA\nSTARTMETADATA", "STARTMETADATA", "inside a block"),
        ("SESSIONDATE=2018-10-13", "SESSIONDATE=2018-10-14", "outside the block's data"),
    ],
)
def test_alcdef_each_rule_can_fail(old, new, message):
    text = _good_text()
    assert old in text, old
    bad = text.replace(old, new, 1)
    problems = alcdef.validate(bad)
    assert any(message in p for p in problems), problems


def test_alcdef_jd_must_increase_and_required_metadata_named():
    text = _good_text()
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("DATA="))
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    assert any("not increasing" in p for p in alcdef.validate("\n".join(lines) + "\n"))
    s = alcdef.Session(np.array([2458404.6]), np.array([0.0]), np.array([0.01]))
    with pytest.raises(alcdef.AlcdefError, match="CONTACTINFO"):
        alcdef.write_text({"OBJECTNUMBER": "1", "OBJECTNAME": "x"}, [s])
