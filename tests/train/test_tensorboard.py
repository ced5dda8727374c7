"""The TensorBoard callback: every scalar for every epoch, histograms, images, hparams."""
import pytest

from distnn import cli
from tests.runs import train_args


def test_tensorboard_events_have_every_scalar_for_every_epoch(blob_dir, tmp_path):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logdir = tmp_path / "tb"
    assert cli.main(["-q", *train_args(blob_dir, tmp_path / "c", epochs=3), "--logdir",
                     str(logdir), "--augment", "rotate=10"]) == 0
    ea = ea_mod.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    tags = ea.Tags()
    for tag in ("train/batch_cost", "train/cost", "train/accuracy", "valid/cost", "valid/accuracy", "lr",
                "throughput/examples_per_second", "time/train_seconds", "saturated/act0"):
        assert [e.step for e in ea.Scalars(tag)] == [0, 1, 2], tag
    assert "weights/dense0.weight" in tags["histograms"]
    assert "grads/dense1.weight" in tags["histograms"]
    assert "augmented_samples" in tags["images"] and "config/text_summary" in tags["tensors"]
    assert ea.PluginTagToContent("hparams")          # the hparams view has this run
    assert [e.step for e in ea.Scalars("hparam/best_valid_accuracy")] == [2]
    # the test figures a run ends with, where the run's other figures are (issue 42)
    for tag in ("test/accuracy", "test/cost", "hparam/final_test_accuracy"):
        assert [e.step for e in ea.Scalars(tag)] == [2], tag
    acc = ea.Scalars("test/accuracy")[0].value
    assert 0.5 < acc <= 1.0
    assert ea.Scalars("hparam/final_test_accuracy")[0].value == pytest.approx(acc)
