"""Registration: known shifts, rotations and flips are recovered."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsphot import register
from tsphot.errors import FrameError


def _field(n=60, seed=0, size=1000):
    rng = np.random.default_rng(seed)
    return rng.uniform(50, size - 50, (n, 2))


def _apply(xy, angle_deg, shift, flip=False):
    th = np.radians(angle_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    if flip:
        rot = rot @ np.diag([-1.0, 1.0])
    c = np.array([500.0, 500.0])
    return (xy - c) @ rot.T + c + np.asarray(shift)


@pytest.mark.parametrize(
    ("angle", "shift", "flip"),
    [
        (0.0, (12.3, -7.9), False),
        (0.7, (3.0, 4.0), False),
        (180.0, (5.5, -2.5), False),
        (90.0, (0.0, 0.0), False),
        (0.0, (2.0, 1.0), True),
    ],
)
def test_known_transform_recovered(angle, shift, flip):
    ref = _field()
    rng = np.random.default_rng(1)
    frm = _apply(ref, angle, shift, flip) + rng.normal(0, 0.05, ref.shape)
    # the frame lists stars in a different order, loses some and gains spurious ones
    frm = np.vstack([frm[5:], rng.uniform(50, 950, (8, 2))])[rng.permutation(63)]
    tr = register.match_stars(ref, frm)
    px, py = tr(ref[:, 0], ref[:, 1])
    truth = _apply(ref, angle, shift, flip)
    assert np.max(np.hypot(px - truth[:, 0], py - truth[:, 1])) < 0.1
    assert tr.flipped == flip
    assert tr.n_matched >= 40


def test_deterministic():
    ref = _field(seed=4)
    frm = _apply(ref, 12.0, (30, 20))
    a = register.match_stars(ref, frm)
    b = register.match_stars(ref, frm)
    assert a == b


def test_too_few_stars_is_a_clear_error():
    with pytest.raises(FrameError, match="cannot register"):
        register.match_stars(_field(), np.array([[10.0, 10.0], [20.0, 30.0]]))


@settings(max_examples=25, deadline=None)
@given(
    dx=st.floats(-80, 80), dy=st.floats(-80, 80), angle=st.floats(-3, 3), seed=st.integers(0, 50)
)
def test_property_small_drift_and_rotation(dx, dy, angle, seed):
    ref = _field(seed=seed)
    frm = _apply(ref, angle, (dx, dy))
    tr = register.match_stars(ref, frm)
    px, py = tr(ref[:, 0], ref[:, 1])
    assert np.max(np.hypot(px - frm[:, 0], py - frm[:, 1])) < 1e-6 + 0.01


def _crop(xy, size=1000):
    m = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
    return xy[m]


@pytest.mark.parametrize(
    ("angle", "shift", "flip"),
    [
        (0.0, (300.0, -200.0), False),  # large drift: a third of the field
        (30.0, (50.0, 50.0), False),  # strong field rotation
        (180.0, (400.0, 0.0), False),  # meridian flip and a large offset
        (90.0, (-20.0, 35.0), True),  # a mirror image (another camera orientation)
        (2.0, (-700.0, 100.0), False),  # 30 % overlap left
    ],
)
def test_large_drift_rotation_and_flip_recovered(angle, shift, flip):
    """The frame sees part of a wider field (brightest first, as detected), moved a lot."""
    sky = _field(n=300, seed=1)
    ref = sky[:60]
    frm = _crop(_apply(sky, angle, shift, flip))[:150]
    tr = register.match_stars(ref, frm)
    px, py = tr(ref[:, 0], ref[:, 1])
    truth = _apply(ref, angle, shift, flip)
    assert np.max(np.hypot(px - truth[:, 0], py - truth[:, 1])) < 0.01
    assert tr.flipped == flip


def test_few_stars_under_cloud_still_register():
    """Thick cloud leaves only the five brightest stars: their pattern is still found."""
    ref = _field(seed=2)
    frm = _apply(ref[:5], 0.3, (12.0, -7.0))
    tr = register.match_stars(ref, frm)
    px, py = tr(ref[:5, 0], ref[:5, 1])
    assert np.max(np.hypot(px - frm[:, 0], py - frm[:, 1])) < 0.01


def test_frames_of_another_field_are_refused_not_matched_by_chance():
    """Twenty frames of other star fields: each one is refused with a reason; none returns
    the spurious transform a few chance coincidences would give."""
    ref = _field(seed=3)
    for seed in range(100, 120):
        with pytest.raises(FrameError, match="cannot register"):
            register.match_stars(ref, _field(n=80, seed=seed))
