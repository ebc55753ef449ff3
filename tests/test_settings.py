"""Settings: TOML and flags, validation, suggestions for typos, object parsing."""

import pytest

from tsphot.errors import SettingsError
from tsphot.settings import make_settings, parse_object


def test_flags_win_over_toml(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'frames = ["raw/*.fits"]\naperture = 5.0\n[[targets]]\nname = "T1"\nx = 1\ny = 2\n'
    )
    s = make_settings(p, aperture=7.0)
    assert s.aperture == 7.0
    assert s.frames == [str(tmp_path / "raw/*.fits")]
    assert s.targets[0].name == "T1"


def test_unknown_key_named_with_suggestion(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("apertur = 5.0\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'apertur'.*did you mean 'aperture'"):
        make_settings(p)


def test_bad_annulus_rejected():
    with pytest.raises(SettingsError, match="annulus"):
        make_settings(annulus=(10.0, 5.0))


def test_parse_object_forms():
    a = parse_object("WASP=412.5,300", "T1")
    assert (a.name, a.x, a.y, a.ra) == ("WASP", 412.5, 300.0, None)
    b = parse_object("HAT=02:04:10.278,+46:41:16.21", "T1")
    assert (b.ra, b.dec, b.x) == ("02:04:10.278", "+46:41:16.21", None)
    c = parse_object("T=10,20@02:04:10.2,+46:41:16", "T1")
    assert (c.x, c.ra) == (10.0, "02:04:10.2")
    d = parse_object("10,20", "C3")
    assert d.name == "C3"
    with pytest.raises(SettingsError):
        parse_object("T=abc,def", "T1")
