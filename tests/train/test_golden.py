"""Bits that a refactoring must not change: two runs' trained parameters against values
recorded before the replica state, the layer registry, the update rule and the split
capabilities were introduced (#38), in float64 on the blobs dataset.

``summary`` is what is recorded: 12 parameters spread over the flat vector, its sum and
its norm, for each configuration and number of workers.  Other BLAS kernels may move the
last bits of float64 products, so the comparison is to 1e-9 relative, far below what
any change of behaviour moves (a step taken differently moves them by ~1e-3)."""
import numpy as np
import pytest

import distnn

MAIN = dict(layers=(64, 24, 4), activation="relu", init="he", optimizer="momentum", lr=0.05,
            batch_size=16, epochs=2, dtype="float64", seed=3)
#: the main job's options with a parameter average, augmentation, dropout and PowerSGD
EVERYTHING = dict(MAIN, ema=0.9, augment="rotate=10,shift=1", keep_prob=0.8,
                  compress="powersgd:2", l2=0.5)

#: recorded with the code before #38 (commit 5c206fe), ``summary`` of each run
RECORDED = {
    ('main', 1): [0.5999508739328931, 0.1506060058835981, -0.18061203254999353, -0.1295621853426512, -0.05676858073881594, -0.029703848774794865, -0.21517808377547365, 0.1455887351238043, 0.3153404571850403, -0.3417167088429837, -0.06969319603671476, -0.27775950012884487, 34.85098735589773, 9.144698013623644],
    ('main', 2): [0.599950873932893, 0.15060600588359807, -0.1806120325499935, -0.1295621853426512, -0.05676858073881594, -0.02970384877479487, -0.21517808377547365, 0.14558873512380427, 0.3153404571850403, -0.3417167088429837, -0.06969319603671474, -0.2777595001288449, 34.85098735589773, 9.144698013623644],
    ('everything', 1): [0.6702382539243819, -0.01835231661961965, -0.14645753907580764, -0.15109356193074722, -0.057803128900667494, -0.02229665851342535, -0.24548871147396847, 0.04071001082401947, 0.13841243250921598, -0.3097156221104683, -0.08908280386127272, 0.06142611630299469, -14.683021315469306, 12.334179808689928],
    ('everything', 2): [0.694123534318309, -0.009674076047168934, -0.1705223565853937, -0.15132749122535816, -0.05813196358104195, -0.0217308740406902, -0.24527600860401652, 0.04105085027057394, 0.14919023790381195, -0.34020968206312874, -0.08865674656273838, 0.07509310788617383, -16.69814380633621, 12.363732550783249],
}


def summary(params: np.ndarray) -> list[float]:
    picks = params[np.linspace(0, params.size - 1, 12).astype(int)]
    return [float(v) for v in picks] + [float(params.sum()), float(np.linalg.norm(params))]


def run(blob_dir, options: dict, workers: int) -> list[float]:
    m = distnn.fit(dataset="idx", data_dir=str(blob_dir), workers=workers, **options)
    return summary(m["network"].params)


@pytest.mark.parametrize("name", ["main", "everything"])
def test_one_worker_trains_what_it_trained_before(name, blob_dir):
    options = {"main": MAIN, "everything": EVERYTHING}[name]
    np.testing.assert_allclose(run(blob_dir, options, 1), RECORDED[name, 1], rtol=1e-9)


@pytest.mark.ray
@pytest.mark.parametrize("name", ["main", "everything"])
def test_two_workers_train_what_they_trained_before(name, blob_dir, ray_session):
    options = {"main": MAIN, "everything": EVERYTHING}[name]
    np.testing.assert_allclose(run(blob_dir, options, 2), RECORDED[name, 2], rtol=1e-9)
