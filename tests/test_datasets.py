"""Settings of the shared real nights."""

from tsphot import datasets


def test_hatp32_settings_and_overrides(tmp_path):
    s = datasets.hatp32_settings(tmp_path, data_dir=tmp_path, all_stars=True, annulus=(8.0, 15.0))
    assert s.frames == [str(tmp_path)] and s.out == str(tmp_path)
    assert [(o.name, o.x, o.y) for o in s.targets] == [("HAT-P-32", 423.2, 286.0)]
    assert s.all_stars and s.annulus == (8.0, 15.0)  # overrides win
    assert s.site == (31.675467, -110.951376, 1268.0)
