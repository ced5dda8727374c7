import numpy as np
import pytest

from distnn.core import regularizers
from distnn.core.gradcheck import numerical_grad, rel_error


def test_penalties_and_their_gradients(rng):
    w = rng.standard_normal(20)
    n, l1, l2 = 50, 0.3, 5.0
    assert regularizers.penalty(w, 0, l2, n) == pytest.approx(l2 / (2 * n) * np.sum(w ** 2))
    assert regularizers.penalty(w, l1, 0, n) == pytest.approx(l1 / n * np.sum(np.abs(w)))
    g = np.zeros(20)
    regularizers.add_grad(g, w, l1, l2, n)
    num = numerical_grad(lambda: regularizers.penalty(w, l1, l2, n), w)
    assert rel_error(g, num) < 1e-6


def test_max_norm_caps_each_units_incoming_weights(rng):
    w = rng.standard_normal((30, 4)) * np.array([0.01, 1.0, 3.0, 0.1])
    before = np.linalg.norm(w, axis=0)
    regularizers.apply_max_norm([w], 2.0)
    after = np.linalg.norm(w, axis=0)
    np.testing.assert_allclose(after, np.minimum(before, 2.0))


def test_bad_strengths():
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        regularizers.check(0.0, -1.0, None)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        regularizers.check(0.0, 0.0, 0.0)
