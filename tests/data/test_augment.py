import numpy as np
import pytest

from distnn.data.augment import Augmenter, gaussian_matrix, parse_spec, warp


@pytest.fixture
def images(rng):
    return rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)


def test_zero_strength_returns_the_input_exactly(images):
    for spec in ("none", "", "rotate=0,shift=0", "elastic=0:4"):
        out = Augmenter(spec)(images, np.arange(6), 3)
        np.testing.assert_array_equal(out, images.astype(np.float32) * np.float32(1 / 255))
    # a zero transform through the resampler is exact too
    out = warp(images, angle=np.zeros(6), shift=np.zeros((6, 2)))
    np.testing.assert_array_equal(out, images.astype(np.float32) * np.float32(1 / 255))


def test_integer_shift_moves_pixels_exactly(images):
    out = warp(images, shift=np.tile([3.0, -2.0], (6, 1)), pixel_max=1.0)
    np.testing.assert_array_equal(out[:, 3:, :-2], images[:, :-3, 2:].astype(np.float32))
    assert np.all(out[:, :3, :] == 0) and np.all(out[:, :, -2:] == 0)  # background


def test_rotation_by_90_degrees_is_rot90(images):
    out = warp(images, angle=np.full(6, 90.0), pixel_max=1.0)
    np.testing.assert_allclose(out, np.rot90(images, axes=(1, 2)), atol=1e-3)


def test_flip_mirrors_left_right_exactly_and_composes_with_a_shift(images):
    flip = np.array([True, False, True, False, True, True])
    out = warp(images, flip=flip, pixel_max=1.0)
    want = np.where(flip[:, None, None], images[:, :, ::-1], images).astype(np.float32)
    np.testing.assert_array_equal(out, want)
    both = warp(images, flip=np.ones(6, bool), shift=np.tile([0.0, 2.0], (6, 1)),
                pixel_max=1.0)      # mirror first, then move right
    np.testing.assert_array_equal(both[:, :, 2:], images[:, :, ::-1][:, :, :-2].astype(np.float32))


def test_flip_probability_is_keyed_like_the_other_transforms(rng):
    imgs = rng.integers(0, 256, (4000, 4, 4), dtype=np.uint8)
    aug = Augmenter("flip=0.5", seed=3)
    f = aug.params(np.arange(4000), 1, (4, 4))["flip"]
    assert 0.45 < f.mean() < 0.55
    np.testing.assert_array_equal(aug.params(np.arange(10, 20), 1, (4, 4))["flip"], f[10:20])
    out = aug(imgs[:50], np.arange(50), 1)
    want = np.where(f[:50, None, None], imgs[:50, :, ::-1], imgs[:50]) / np.float32(255)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    # adding flip leaves the other transforms' random numbers as they were
    a = Augmenter("rotate=10", seed=3).params(np.arange(5), 0, (4, 4))["angle"]
    b = Augmenter("rotate=10,flip=0.5", seed=3).params(np.arange(5), 0, (4, 4))["angle"]
    np.testing.assert_array_equal(a, b)


def test_gaussian_matrix_matches_scipy(rng):
    ndimage = pytest.importorskip("scipy.ndimage")
    v = rng.standard_normal(28)
    for sigma in (1.0, 4.0, 6.0):
        np.testing.assert_allclose(gaussian_matrix(28, sigma) @ v,
                                   ndimage.gaussian_filter1d(v, sigma), atol=1e-12)


def test_elastic_matches_scipy_map_coordinates_for_the_same_field(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    aug = Augmenter("elastic=34:4", seed=1)
    disp = aug.params(np.arange(6), 0, (28, 28))["displacement"]
    ours = aug(images, np.arange(6), 0)
    yy, xx = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    for i in range(6):
        ref = ndimage.map_coordinates(images[i].astype(np.float64) / 255,
                                      [yy + disp[i, 0], xx + disp[i, 1]], order=1,
                                      mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(ours[i], ref, atol=2e-5)


def test_distortion_depends_only_on_seed_epoch_and_index(images):
    aug = Augmenter("rotate=15,shift=2,scale=0.1,shear=5,elastic=34:4", seed=7)
    idx = np.array([40, 3, 17, 8, 99, 5])
    full = aug(images, idx, 2)
    order = np.array([4, 1, 5])
    part = aug(images[order], idx[order], 2)
    np.testing.assert_array_equal(full[order], part)
    assert not np.array_equal(aug(images, idx, 3), full)         # new epoch, new distortion
    assert not np.array_equal(Augmenter(aug.spec, seed=8)(images, idx, 2), full)
    assert full.dtype == np.float32 and full.min() >= 0 and full.max() <= 1


def test_spec_parsing():
    s = parse_spec("rotate=15,shift=2,elastic=34:4")
    assert (s.rotate, s.shift, s.elastic_alpha, s.elastic_sigma) == (15, 2, 34, 4)
    assert str(s) == "rotate=15,shift=2,elastic=34:4"
    assert parse_spec("elastic=8").elastic_sigma == 4.0
    assert str(parse_spec("shift=2,flip=0.5")) == "shift=2,flip=0.5"
    for bad, match in [("spin=3", "bad augmentation item"), ("rotate=x", "needs numbers"),
                       ("rotate=-5", ">= 0"), ("elastic=34:0", "0 < SIGMA"),
                           ("shift=1e300", "beyond its range"), ("elastic=34:100000", "SIGMA <= 100"),
                       ("scale=1.5", "F < 1"), ("shift", "bad augmentation item"),
                       ("flip=2", "probability P <= 1")]:
        with pytest.raises(ValueError, match=match):
            parse_spec(bad)
