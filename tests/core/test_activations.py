import numpy as np
import pytest

from distnn.core import activations
from distnn.core.gradcheck import numerical_grad, rel_error

ALL = sorted(set(activations.HIDDEN) | set(activations.OUTPUT))


def _apply(fn, z):
    with activations.quiet():
        return fn.forward_(z.copy())


@pytest.mark.parametrize("name", ALL)
def test_backward_matches_central_differences(name, rng):
    fn = activations.get(name, output=True)
    z = rng.standard_normal((4, 6))
    if name == "relu":  # keep away from the kink at 0
        z += np.sign(z) * 0.1
    g = rng.standard_normal((4, 6))

    def f():
        return float(np.sum(_apply(fn, z) * g))

    num = numerical_grad(f, z)
    a = _apply(fn, z)
    ana = fn.backward_(g.copy(), a, np.empty_like(z))
    assert rel_error(ana, num) < 1e-6


def test_reference_values():
    z = np.array([[-1.0, 0.0, 2.0]])
    np.testing.assert_allclose(_apply(activations.Sigmoid(), z), 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(_apply(activations.ScaledTanh(), z), 1.7159 * np.tanh(2 * z / 3))
    np.testing.assert_allclose(_apply(activations.ReLU(), z), [[0.0, 0.0, 2.0]])
    sm = _apply(activations.Softmax(), z)
    np.testing.assert_allclose(sm, np.exp(z) / np.exp(z).sum())
    # LeCun's constants make f(1) = 1
    np.testing.assert_allclose(_apply(activations.ScaledTanh(), np.ones((1, 1))), 1.0, rtol=1e-4)


def test_extreme_inputs_do_not_overflow():
    z = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]], dtype=np.float32)
    with np.errstate(all="raise"), activations.quiet():
        s = activations.Sigmoid().forward_(z.copy())
    assert np.all(np.isfinite(s)) and s[0, 0] == 0.0 and s[0, -1] == 1.0
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sm = activations.Softmax().forward_(z.copy())
    assert np.all(np.isfinite(sm)) and sm[0, -1] == pytest.approx(1.0)


def test_unknown_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="unknown hidden activation 'softmax'"):
        activations.get("softmax")
    with pytest.raises(ValueError, match="expected one of"):
        activations.get("swish", output=True)
