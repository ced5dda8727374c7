"""The failure and scaling policies, with scripted faults (no Ray): what they decide,
and that a pool asks them (a pool given other policies behaves as they say)."""
import pytest

from distnn.config import TrainConfig
from distnn.parallel import policies
from distnn.parallel.policies import GIVE_UP, REPLAY, FailurePolicy, ScalingPolicy


def test_failures_are_replayed_until_the_limit_then_given_up():
    p = FailurePolicy(max_failures=2)
    assert [p.decide(epoch=4, failures=k) for k in (1, 2, 3)] == [REPLAY, REPLAY, GIVE_UP]
    assert FailurePolicy(0).decide(0, 1) == GIVE_UP          # --max-failures 0: never
    why = p.why(4, 3, [1])
    assert "epoch 4 failed 3 times" in why and "epoch (3) are kept" in why


@pytest.mark.parametrize("events,expect", [
    # (workers now, free CPUs) at epoch boundaries -> workers added
    ([(2, 0), (1, 0), (1, 1), (2, 5)], [0, 0, 1, 2]),
    ([(1, 3)], [3]),                        # up to --workers 4, one per free CPU
    ([(4, 2)], [0]),
])
def test_growth_at_epoch_boundaries_follows_free_cpus(events, expect):
    s = ScalingPolicy(workers=4)
    assert [s.to_add(world, free) for world, free in events] == expect


def test_going_on_with_fewer_is_allowed_down_to_min_workers():
    s = ScalingPolicy(workers=4, min_workers=2, replace_wait=0.0)
    assert [s.may_go_on_with(n) for n in (4, 2, 1, 0)] == [True, True, False, False]
    assert s.wait_for_cpus() == 0.0       # no CPU free: go on at once


def test_defaults_come_from_the_config():
    f, s = policies.from_config(TrainConfig(workers=3, max_failures=5, min_workers=2,
                                            replace_wait=7.0))
    assert f == FailurePolicy(5) and s == ScalingPolicy(3, 2, 7.0)
    f, s = policies.from_config(TrainConfig(workers=2))
    assert f.max_failures == 3 and s.min_workers == 1 and s.replace_wait == 0.0


class _Pool:
    """The parts of RayPool's recovery that consult the policies, with the cluster
    scripted (workers that die, CPUs free) and nothing placed for real."""

    from distnn.parallel.ray_pool import RayPool
    _recover, _replace, _shrink, _cpus_for, _fault = (RayPool._recover, RayPool._replace,
                                                     RayPool._shrink, RayPool._cpus_for,
                                                     RayPool._fault)
    _at, _named, _nodes_lost = RayPool._at, RayPool._named, RayPool._nodes_lost
    threads = 1                  # CPUs a worker takes (--threads)

    def __init__(self, failure, scaling, free_cpus):
        import types
        self.failure, self.scaling, self.world = failure, scaling, 2
        self.workers, self._where, self.faults, self.state = ["w0", "w1"], ["a", "b"], [], {}
        self.actions = []
        self.ray = types.SimpleNamespace(
            kill=lambda w, no_restart: self.actions.append(("kill", w)),
            available_resources=lambda: {"CPU": free_cpus},
            util=types.SimpleNamespace(get_node_ip_address=lambda: "a"))

    def _spawn(self, rank):
        self.actions.append(("spawn", rank))
        return f"new{rank}"

    def _wire(self):
        self.actions.append(("wire", self.world))

    def _renumber(self, workers):
        self.workers, self.world = workers, len(workers)

    def set_state(self, state):
        self.actions.append(("reset",))


def test_a_pool_replaces_when_cpus_are_free_and_drops_when_none_are(monkeypatch):
    """Worker 1, alone on node "b" (the driver is on "a"), is lost."""
    from distnn.parallel import ray_pool
    monkeypatch.setattr(ray_pool, "FREED_SECONDS", 0.0)
    p = _Pool(FailurePolicy(3), ScalingPolicy(2), free_cpus=1)
    p._recover([1], epoch=2, failures=1)
    assert ("spawn", 1) in p.actions and p.world == 2 and p.faults[-1]["action"] == \
        "replaced, epoch replayed"
    p = _Pool(FailurePolicy(3), ScalingPolicy(2), free_cpus=0)
    p._recover([1], epoch=2, failures=1)
    assert not any(a[0] == "spawn" for a in p.actions) and p.world == 1
    assert p.faults[-1]["action"] == "could not be replaced; continuing on 1 workers"
    p = _Pool(FailurePolicy(3), ScalingPolicy(2, min_workers=2), free_cpus=0)
    with pytest.raises(RuntimeError, match="fewer than --min-workers 2"):
        p._recover([1], epoch=2, failures=1)
    p = _Pool(FailurePolicy(0), ScalingPolicy(2), free_cpus=1)     # another policy
    with pytest.raises(RuntimeError, match="epoch 2 failed 1 times"):
        p._recover([1], epoch=2, failures=1)
    # a worker stopped on the driver's own node: its CPU comes back, so it is replaced
    # however long that takes (--replace-timeout), not dropped
    p = _Pool(FailurePolicy(3), ScalingPolicy(2), free_cpus=0)
    p._where = ["a", "a"]
    p._recover([1], epoch=2, failures=1)
    assert ("spawn", 1) in p.actions and p.world == 2
    # a worker of --threads 2 takes two CPUs: one free CPU is not room for it
    p = _Pool(FailurePolicy(3), ScalingPolicy(2), free_cpus=1)
    p.threads = 2
    p._recover([1], epoch=2, failures=1)
    assert not any(a[0] == "spawn" for a in p.actions) and p.world == 1
