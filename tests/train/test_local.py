"""Local steps with logical replicas (--local-steps, --outer, --replicas), in one
process: H = 1 with the average is the synchronous run, the outer optimizer is DiLoCo's
(PyTorch's Nesterov SGD on the averaged change), SIGKILL + --resume is bit for bit with
every replica's own optimizer state, and what it does not combine with is refused."""
import numpy as np
import pytest

import distnn
from distnn import cli
from distnn.config import TrainConfig
from distnn.core import optim
from distnn.io import checkpoint as ckpt
from tests.runs import train_args
from tests.train.test_resume import _run_killed_and_resumed

MAIN = dict(layers=(64, 24, 4), activation="relu", init="he", optimizer="momentum", lr=0.05,
            batch_size=16, epochs=2, dtype="float64", seed=3)


def params(blob_dir, **kw):
    return distnn.fit(dataset="idx", data_dir=str(blob_dir), **{**MAIN, **kw})["network"].params


@pytest.mark.parametrize("k", [1, 2, 4])
def test_one_local_step_averaged_is_the_synchronous_run(blob_dir, k):
    """K replicas taking one momentum step each on their slice of the batch, then
    averaged, move the global parameters as one process does on the whole batch (the
    mean of the replicas' velocities follows the synchronous velocity): equal up to
    rounding, the exact sum's grid included."""
    sync = params(blob_dir)
    local = params(blob_dir, local_steps=1, outer="average", replicas=k)
    np.testing.assert_allclose(local, sync, rtol=1e-11, atol=1e-13)
    assert not np.array_equal(params(blob_dir, local_steps=4, replicas=k), sync) or k == 1


@pytest.mark.parametrize("overlap", [False, True])
def test_local_steps_change_the_result_and_learn(blob_dir, overlap):
    m = distnn.fit(dataset="idx", data_dir=str(blob_dir), **{
        **MAIN, "local_steps": 8, "replicas": 2, "epochs": 3, "overlap_sync": overlap,
        "batchnorm": True})
    assert m["test_accuracy"] > 0.9
    assert len(m["history"]) == 3
    plain = params(blob_dir, local_steps=8, replicas=2, epochs=3, batchnorm=True)
    assert np.array_equal(m["network"].params, plain) != overlap


def test_bf16_synchronisations_learn_and_send_what_bfloat16_carries_exactly(blob_dir,
                                                                            monkeypatch):
    """--compress bf16: the sum of the 4 replicas' changes (on their grid) is a
    bfloat16, so carrying it in bfloat16 rounds nothing (partial sums on 2 workers and
    every backend: tests/parallel/test_local_steps.py); the run learns, and differs from
    the float32 one."""
    from distnn.parallel.comm import base
    from distnn.parallel.comm.wire import BF16
    seen = []
    real = base.Group.allreduce_

    def spy(self, step, buf, wire=base.RAW, tail=0):
        if wire is BF16:
            head = buf[:buf.size - tail].copy()
            seen.append(head.copy())
            BF16.round_(head)
            np.testing.assert_array_equal(head, buf[:buf.size - tail])
        real(self, step, buf, wire, tail)
    monkeypatch.setattr(base.Group, "allreduce_", spy)
    run = dict(local_steps=8, replicas=4, epochs=2, dtype="float32", batchnorm=True)
    m = distnn.fit(dataset="idx", data_dir=str(blob_dir), **{**MAIN, **run,
                                                             "compress": "bf16"})
    assert m["test_accuracy"] > 0.9
    assert seen and all(np.count_nonzero(s) for s in seen)
    assert not np.array_equal(m["network"].params, params(blob_dir, **run))


def test_outer_nesterov_is_pytorchs_nesterov_sgd_on_the_averaged_change():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(50)
    outer = optim.Outer("nesterov:0.7:0.9")
    p = torch.tensor(theta.copy(), requires_grad=True)
    sgd = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True)
    for _ in range(4):
        delta = rng.standard_normal(50)
        outer.step(theta, delta.copy())
        p.grad = torch.tensor(delta)
        sgd.step()
    np.testing.assert_allclose(theta, p.detach().numpy(), rtol=1e-13)
    avg = optim.Outer("average")
    t = np.ones(3)
    avg.step(t, np.full(3, 0.25))
    np.testing.assert_array_equal(t, 0.75)
    assert (optim.Outer("nesterov").lr, optim.Outer("nesterov").momentum) == (0.7, 0.9)


@pytest.mark.parametrize("bad,message", [
    (dict(outer="nesterov:x"), "outer must be average or nesterov"),
    (dict(outer="nesterov:0.7:1.0"), "outer momentum"),
    (dict(local_steps=0), "local_steps must be an integer >= 1"),
    (dict(overlap_sync=True), "--overlap-sync overlaps the synchronisations of local"),
    (dict(local_steps=8, shard_memory=64, dataset="parquet:/data/d"),
     "--shard-memory 64 does not apply"),
    (dict(local_steps=8, compress="powersgd:2"), "--compress powersgd:2 does not apply"),
    (dict(local_steps=8, compress="powersgd:2"), "use --compress bf16 or leave it out"),
    (dict(local_steps=8, bucket_mb=1), "--bucket-mb 1 does not apply"),
    (dict(local_steps=8, threads=2), "--threads 2 does not apply"),
    (dict(local_steps=8, lr_scaling="linear"), "--lr-scaling linear"),
    (dict(local_steps=8, batchnorm=True, sync_batchnorm=True), "--sync-batchnorm"),
    (dict(local_steps=8, replicas=2, workers=3, batch_size=30), "--replicas 2 is fewer than"),
    (dict(local_steps=8, replicas=16, batch_size=8), "--replicas 16 is more than --batch"),
])
def test_what_local_steps_do_not_combine_with_is_one_line(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TrainConfig(**bad)


LOCAL = ("--local-steps", "4", "--replicas", "3", "--outer", "nesterov:0.5:0.8",
         "--optimizer", "momentum")


@pytest.mark.parametrize("overlap", [(), ("--overlap-sync",)])
def test_sigkill_then_resume_is_bit_identical_with_every_replicas_state(blob_dir, tmp_path,
                                                                        overlap):
    """Every replica's own velocity and the outer momentum are in the checkpoint and come
    back: the resumed run holds exactly the uninterrupted one's state."""
    _run_killed_and_resumed(blob_dir, tmp_path, extra=LOCAL + overlap)
    c = ckpt.load(tmp_path / "part")
    assert {f"replica{r}.velocity.dense0.weight" for r in range(3)} <= set(c.optimizer)
    assert "outer.momentum.params" in c.optimizer
    v = [c.optimizer[f"replica{r}.velocity.dense0.weight"] for r in range(3)]
    assert not np.array_equal(v[0], v[1])          # each replica's own
    assert c.meta["config"]["replicas"] == 3 and c.meta["outer"] == {
        "spec": "nesterov:0.5:0.8"}


def test_a_resume_that_changes_the_local_steps_is_refused(blob_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli.main(["-q", *train_args(blob_dir, out, epochs=1, extra=LOCAL)]) == 0
    capsys.readouterr()
    rc = cli.main(["-q", *train_args(blob_dir, out, epochs=2, extra=LOCAL[:1] + ("8",)
                                     + LOCAL[2:]), "--resume"])
    assert rc == 2
    assert "--local-steps: checkpoint 4, now 8" in capsys.readouterr().err
    # K is recorded: a resume with other --workers keeps the run's 3 replicas
    assert ckpt.load(out).meta["config"]["replicas"] == 3
