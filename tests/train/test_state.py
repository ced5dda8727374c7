"""The typed replica state: merging the workers' shares, handing a merged state out,
checkpoint round trips (with a plug-in's state, and as checkpoints before #38 held it),
and the settings that restart a plug-in."""
import numpy as np
import pytest

from distnn.core import optim, schedules
from distnn.core.network import Network
from distnn.io import checkpoint as ckpt
from distnn.train.state import PluginState, ReplicaState


def _plugin(rng, shares=("errors",)):
    return PluginState({"name": "powersgd", "rank": 2},
                       {"q": {"dense0.weight": rng.standard_normal((3, 2))},
                        "errors": {"dense0.weight": rng.standard_normal((4, 3))}}, shares)


def _worker_state(net, rng, shard, plugin):
    P = net.params.size
    lo, hi = shard
    return ReplicaState(net.params.copy(), {}, {"name": "momentum", "t": 5, "lr": 0.1,
                                                "slots": {"velocity": rng.standard_normal(hi - lo).astype(np.float32)}},
                        {"spec": "constant"}, {"compress": plugin}, shard if (lo, hi) != (0, P)
                        else None)


def test_merge_assembles_slots_and_sums_shares_in_rank_order(rng):
    net = Network([4, 3, 2])
    P = net.params.size
    cut = P // 3
    plugins = [_plugin(rng) for _ in range(3)]
    for p in plugins[1:]:          # the same Q everywhere, as the compressor keeps it
        p.arrays["q"] = plugins[0].arrays["q"]
    states = [_worker_state(net, rng, s, p) for s, p in
              zip([(0, cut), (cut, 2 * cut), (2 * cut, P)], plugins)]
    merged = ReplicaState.merge(states)
    want = np.concatenate([s.optimizer["slots"]["velocity"] for s in states])
    np.testing.assert_array_equal(merged.optimizer["slots"]["velocity"], want)
    errors = [p.arrays["errors"]["dense0.weight"] for p in plugins]
    np.testing.assert_array_equal(merged.plugins["compress"].arrays["errors"]["dense0.weight"],
                                  (errors[0] + errors[1]) + errors[2])
    assert merged.plugins["compress"].arrays["q"] is plugins[0].arrays["q"]
    assert merged.shard is None and merged.has_shares and merged.optimizer["t"] == 5
    # handed out: the whole to the first worker, zeros of the shares to the others
    first, other = merged.plugin_for("compress", 0), merged.plugin_for("compress", 1)
    np.testing.assert_array_equal(first.arrays["errors"]["dense0.weight"],
                                  merged.plugins["compress"].arrays["errors"]["dense0.weight"])
    assert not other.arrays["errors"]["dense0.weight"].any()
    np.testing.assert_array_equal(other.arrays["q"]["dense0.weight"],
                                  plugins[0].arrays["q"]["dense0.weight"])
    assert merged.plugin_for("outer", 0) is None


def test_merge_refuses_shards_that_leave_a_gap(rng):
    net = Network([4, 3, 2])
    P = net.params.size
    states = [_worker_state(net, rng, s, _plugin(rng)) for s in [(0, 5), (6, P)]]
    with pytest.raises(RuntimeError, match="do not cover"):
        ReplicaState.merge(states)


def test_a_plugin_without_shares_keeps_the_first_workers(rng):
    a, b = _plugin(rng, shares=()), _plugin(rng, shares=())
    merged = PluginState.merge([a, b])
    assert merged.arrays["errors"] is a.arrays["errors"] and merged.share(False) is merged


def _trained_state(net, rng, plugins=None):
    opt = optim.Momentum(0.1, 0.9).average(0.99)
    params = net.params.copy()
    opt.start_average(params)
    opt.step(params, rng.standard_normal(params.size).astype(net.dtype))
    opt.update_average(params)
    net.params[...] = params
    return ReplicaState.capture(net, opt, schedules.parse("step:2:0.5", 0.1), plugins)


def test_checkpoint_round_trip_with_a_plugin_state(tmp_path, rng):
    net = Network([4, 3, 2], batchnorm=False)
    plugin = PluginState({"name": "powersgd", "rank": 1},
                         {"q": {"dense0.weight": rng.standard_normal((3, 1)).astype(np.float32)},
                          "errors": {"dense0.weight": rng.standard_normal((4, 3)).astype(
                              np.float32)}}, ("errors",))
    state = _trained_state(net, rng, {"compress": plugin})
    tensors, rows, meta = state.to_checkpoint(net)
    ckpt.save(tmp_path, "epoch-0000", tensors, rows,
              {"epoch": 0, "config": {}, "history": [{"epoch": 0}], **meta})
    back = ReplicaState.from_checkpoint(ckpt.load(tmp_path), net)
    np.testing.assert_array_equal(back.params, state.params)
    assert set(back.optimizer["slots"]) == {"velocity", "average"}
    for k, v in state.optimizer["slots"].items():
        np.testing.assert_array_equal(back.optimizer["slots"][k], v)
    assert back.optimizer["t"] == 1 and back.schedule == state.schedule
    p = back.plugins["compress"]
    assert p.scalars == {"name": "powersgd", "rank": 1} and p.shares == ("errors",)
    for part in ("q", "errors"):
        np.testing.assert_array_equal(p.arrays[part]["dense0.weight"],
                                      plugin.arrays[part]["dense0.weight"])
    # the average is what the model is evaluated with
    np.testing.assert_array_equal(back.model_params(), state.optimizer["slots"]["average"])
    assert not np.array_equal(back.model_params(), back.params)


def test_a_checkpoint_from_before_the_plugin_record_reads_the_compressor(tmp_path, rng):
    """Checkpoints written before #38 hold a compressor's scalars under "compress" and
    its arrays as "compress.<part>.<key>" rows, and no "plugins" entry."""
    net = Network([4, 3, 2])
    state = _trained_state(net, rng)
    tensors, rows, meta = state.to_checkpoint(net)
    rows["compress.errors.dense0.weight"] = np.ones((4, 3), np.float32)
    rows["compress.q.dense0.weight"] = np.ones((3, 1), np.float32)
    ckpt.save(tmp_path, "epoch-0000", tensors, rows,
              {"epoch": 0, "config": {}, "history": [{"epoch": 0}], **meta,
               "compress": {"name": "powersgd", "rank": 1}})
    back = ReplicaState.from_checkpoint(ckpt.load(tmp_path), net)
    assert set(back.optimizer["slots"]) == {"velocity", "average"}
    assert back.plugins["compress"].shares == ("errors",)
    assert back.plugins["compress"].arrays["errors"]["dense0.weight"].sum() == 12


def test_a_plugin_whose_setting_changed_starts_afresh(rng):
    net = Network([4, 3, 2])
    state = _trained_state(net, rng, {"compress": _plugin(rng)})
    kept = state.for_settings({"compress": "powersgd:2"}, {"compress": "powersgd:2"})
    assert "compress" in kept.plugins
    changed = state.for_settings({"compress": "powersgd:2"}, {"compress": "powersgd:4"})
    assert changed.plugins == {} and "compress" in state.plugins
    hp = state.with_hyperparameters({"lr": 0.5, "momentum": 0.8})
    assert hp.optimizer["lr"] == 0.5 and state.optimizer["lr"] == 0.1


def test_a_checkpoint_tensor_of_the_wrong_shape_is_named(tmp_path, rng):
    net = Network([4, 3, 2])
    tensors, rows, meta = _trained_state(net, rng).to_checkpoint(net)
    ckpt.save(tmp_path, "epoch-0000", tensors, rows,
              {"epoch": 0, "config": {}, "history": [{"epoch": 0}], **meta})
    with pytest.raises(ckpt.CheckpointError, match=r"dense0.weight is of shape \(4, 3\); "
                                                   r"the network needs \(5, 3\)"):
        ReplicaState.from_checkpoint(ckpt.load(tmp_path), Network([5, 3, 2]))
