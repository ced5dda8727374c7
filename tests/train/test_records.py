"""What a run records: the straggler line, loading a state into a network."""
import numpy as np

from distnn import Network
from distnn.train.records import straggler
from distnn.train.state import ReplicaState


def _rank(r, work, comm=0.0):
    return {"rank": r, "data_seconds": 0.0, "compute_seconds": work, "compress_seconds": 0.0,
            "update_seconds": 0.0, "comm_seconds": comm}


def test_the_straggler_is_named_when_it_costs_a_tenth_of_the_epoch():
    ranks = [_rank(0, 3.0, comm=1.6), _rank(1, 4.5, comm=0.1), _rank(2, 2.9, comm=1.7)]
    said = straggler(ranks, seconds=5.0)
    assert said.startswith("rank 1 is the straggler") and "costing the epoch about 1.55 s" \
        in said and "31%" in said
    assert straggler(ranks[:1], 5.0) is None                     # one worker: none
    assert straggler([_rank(0, 3.0), _rank(1, 3.2)], 5.0) is None   # 0.2 s: noise
    assert straggler([_rank(0, 0.10), _rank(1, 0.16)], 0.2) is None  # under half a second


def test_load_state_takes_the_average_unless_told_not_to(rng):
    net = Network([4, 3, 2], batchnorm=True)
    p = rng.standard_normal(net.params.size).astype(np.float32)
    state = ReplicaState(p, {k: np.full_like(v, 7) for k, v in net.named_buffers().items()},
                         {"slots": {"average": p * 0 + 1}}, {})
    state.load_into(net)
    assert (net.params == 1).all() and all((v == 7).all() for v in net.named_buffers().values())
    state.load_into(net, average=False)
    np.testing.assert_array_equal(net.params, p)
