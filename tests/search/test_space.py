"""Search spaces: grids, seeded random draws, the hidden-width override."""
import numpy as np
import pytest

from distnn.config import TrainConfig
from distnn.search import space


def test_grid_expansion():
    g = space.parse_grid(["hidden=10,25", "lr=0.05,0.1,0.5", "l2=0.001"])
    assert g == {"hidden": [10, 25], "lr": [0.05, 0.1, 0.5], "l2": [0.001]}
    trials = space.expand_grid(g)
    assert len(trials) == 6 and trials[0] == {"hidden": 10, "lr": 0.05, "l2": 0.001}
    assert {(t["hidden"], t["lr"]) for t in trials} == {(h, lr) for h in (10, 25)
                                                        for lr in (0.05, 0.1, 0.5)}
    for bad in (["lr"], ["learning_rate=0.1"], ["lr="]):
        with pytest.raises(ValueError):
            space.parse_grid(bad)


def test_random_sampling_is_seeded_and_in_range():
    sp = space.parse_random(["lr=loguniform:0.001:1", "hidden=choice:30,100",
                               "keep_prob=uniform:0.5:1", "batch_size=randint:8:64"])
    a = space.sample_random(sp, 200, seed=3)
    assert a == space.sample_random(sp, 200, seed=3)
    assert a != space.sample_random(sp, 200, seed=4)
    lrs = np.array([t["lr"] for t in a])
    assert lrs.min() >= 1e-3 and lrs.max() <= 1
    # log-uniform: about a third of the draws in each decade
    assert abs(np.mean(lrs < 0.01) - 1 / 3) < 0.1 and abs(np.mean(lrs > 0.1) - 1 / 3) < 0.1
    assert {t["hidden"] for t in a} == {30, 100}
    assert all(8 <= t["batch_size"] <= 64 and isinstance(t["batch_size"], int) for t in a)
    with pytest.raises(ValueError, match="A > 0 for loguniform"):
        space.parse_random(["lr=loguniform:0:1"])


def test_hidden_override_sets_every_hidden_layer():
    base = TrainConfig(layers=(784, 30, 30, 10))
    c = space.apply(base, {"hidden": 100, "lr": 0.3})
    assert c.layers == (784, 100, 100, 10) and c.lr == 0.3


def test_trials_from_python_values_are_the_flags_trials():
    flags = space.trials(["hidden=10,25", "lr=0.05,0.1"], ["l2=loguniform:0.001:1"], 3, 7)
    python = space.trials({"hidden": [10, 25], "lr": (0.05, 0.1)},
                          {"l2": "loguniform:0.001:1"}, samples=3, seed=7)
    assert python == flags and len(flags) == 12
    assert space.trials({"lr": 0.1}) == [{"lr": 0.1}]      # one value, not a list
    for bad, message in (("lr=0.1", "not the string"), ({"lr": []}, "no values"),
                         ({}, "nothing to search"), ({"learning_rate": [1]}, "learning_rate")):
        with pytest.raises(ValueError, match=message):
            space.trials(bad)
