"""The embedded synthetic source: deterministic, seeded, and actually varied."""

import numpy as np

from facegan.data.synthetic import render_face


def test_same_seed_and_index_give_identical_pixels():
    assert np.array_equal(render_face(7, 3, 64), render_face(7, 3, 64))


def test_seed_and_index_change_the_face():
    base = render_face(0, 0, 64).astype(int)
    assert np.abs(base - render_face(0, 1, 64)).mean() > 10
    assert np.abs(base - render_face(1, 0, 64)).mean() > 10


def test_shape_dtype_and_variety_of_a_set():
    faces = np.stack([render_face(0, i, 32) for i in range(32)])
    assert faces.shape == (32, 32, 32, 3) and faces.dtype == np.uint8
    # the face sits in the middle: its centre differs from the corners (background) on average
    centre = faces[:, 12:20, 12:20].astype(float).mean(axis=(1, 2))
    corner = faces[:, :4, :4].astype(float).mean(axis=(1, 2))
    assert np.abs(centre - corner).mean() > 20
    assert faces.reshape(32, -1).std(0).mean() > 20  # not a single repeated image
