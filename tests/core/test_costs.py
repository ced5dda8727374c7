import numpy as np
import pytest

from distnn.core import activations, costs
from distnn.core.gradcheck import numerical_grad, rel_error

PAIRS = [("quadratic", "sigmoid"), ("quadratic", "softmax"), ("quadratic", "identity"),
         ("quadratic", "tanh"), ("cross-entropy", "sigmoid"), ("log-likelihood", "softmax")]


def _loss_delta(cost, act, z, labels):
    with activations.quiet():
        a = act.forward_(z.copy())
        pos = costs.target_positions(labels, z.shape[1])
        delta = np.empty_like(z)
        loss = cost.loss_and_delta(z, a, pos, act, delta, np.empty_like(z), 1.0)
    return loss, delta, a


@pytest.mark.parametrize("cost_name,out", PAIRS)
def test_delta_is_the_gradient_of_the_cost(cost_name, out, rng):
    cost, act = costs.get(cost_name), activations.get(out, output=True)
    z = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)
    num = numerical_grad(lambda: _loss_delta(cost, act, z, y)[0], z)
    _, delta, _ = _loss_delta(cost, act, z, y)
    assert rel_error(delta, num) < 1e-6


def test_fast_learning_pairs_have_delta_a_minus_y(rng):
    z = rng.standard_normal((6, 3))
    y = np.array([0, 1, 2, 2, 1, 0])
    onehot = np.eye(3)[y]
    for name, out in (("cross-entropy", "sigmoid"), ("log-likelihood", "softmax")):
        _, delta, a = _loss_delta(costs.get(name), activations.get(out, output=True), z, y)
        np.testing.assert_allclose(delta, a - onehot, atol=1e-12)


def test_values_match_the_textbook_formulas(rng):
    z = rng.standard_normal((4, 3))
    y = np.array([2, 0, 1, 1])
    Y = np.eye(3)[y]
    loss, _, a = _loss_delta(costs.CrossEntropy(), activations.Sigmoid(), z, y)
    assert loss == pytest.approx(-np.sum(Y * np.log(a) + (1 - Y) * np.log(1 - a)))
    loss, _, a = _loss_delta(costs.LogLikelihood(), activations.Softmax(), z, y)
    assert loss == pytest.approx(-np.sum(np.log(a[np.arange(4), y])))
    loss, _, a = _loss_delta(costs.Quadratic(), activations.Sigmoid(), z, y)
    assert loss == pytest.approx(0.5 * np.sum((a - Y) ** 2))


def test_saturated_outputs_give_finite_cost():
    z = np.array([[-200.0, 200.0, 0.0]], dtype=np.float32)
    y = np.array([0])
    with np.errstate(all="raise"):
        for name, out in (("cross-entropy", "sigmoid"), ("log-likelihood", "softmax")):
            loss, delta, _ = _loss_delta(costs.get(name), activations.get(out, output=True), z, y)
            assert np.isfinite(loss) and loss > 100  # confidently wrong costs a lot
            assert np.all(np.isfinite(delta))


def test_cost_output_mismatch_is_an_error():
    with pytest.raises(ValueError, match="needs output activation 'softmax'"):
        costs.get("log-likelihood").check_output(activations.Sigmoid())
    with pytest.raises(ValueError, match="unknown cost"):
        costs.get("hinge")
