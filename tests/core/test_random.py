import numpy as np

from distnn.core.random import fold_key, keyed_uniform


def test_values_depend_only_on_key_index_and_position():
    k = fold_key(1, 2, 3)
    a = keyed_uniform(k, np.array([5, 9, 2]), 11)
    b = keyed_uniform(k, np.array([2, 5]), 11)
    np.testing.assert_array_equal(a[[2, 0]], b)
    assert not np.array_equal(keyed_uniform(fold_key(1, 2, 4), [5], 11), a[:1])


def test_uniformity_and_range():
    u = keyed_uniform(fold_key(0), np.arange(1000), 501)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    np.testing.assert_allclose(hist, 0.1, atol=0.003)
    d = keyed_uniform(fold_key(0), np.arange(100), 100, np.float64, -2, 3)
    assert d.min() >= -2 and d.max() < 3 and abs(d.mean() - 0.5) < 0.05
    # neighbouring positions are not correlated
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
