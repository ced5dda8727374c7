"""Callbacks, scripted: each sees (epoch, logs, trainer) and acts only through the
trainer.  A stand-in trainer records what they do."""
import pytest

from distnn.core.schedules import HalveOnPlateau
from distnn.train.callbacks import EarlyStopping, PlateauSchedule, ProgressLogger


class FakeTrainer:
    """The part of the driver callbacks use: history, stop, epoch, snapshot/restore,
    the schedule."""

    def __init__(self, schedule=None, history=()):
        self.history, self.stop, self.epoch, self.best_epoch = list(history), False, 0, None
        self.schedule, self.state_loader = schedule, None
        self.state, self.restored = {"at": None}, []

    def snapshot(self):
        return dict(self.state)

    def restore(self, state):
        self.restored.append(state)


def _drive(cbs, trainer, values, key="valid_accuracy"):
    """Run epochs with ``key`` = values[i] until a callback stops the trainer."""
    for cb in cbs:
        cb.on_train_begin(trainer)
    for epoch, v in enumerate(values):
        trainer.state = {"at": epoch}
        logs = {"epoch": epoch, key: v}
        trainer.history.append(logs)
        for cb in cbs:
            cb.on_epoch_end(epoch, logs, trainer)
        if trainer.stop:
            break
    for cb in cbs:
        cb.on_train_end(trainer)
    return epoch


def test_early_stopping_waits_patience_epochs_then_restores_the_best():
    t = FakeTrainer()
    stopped = _drive([EarlyStopping("valid_accuracy", "max", patience=2)], t,
                     [0.5, 0.7, 0.6, 0.69, 0.9, 0.95])
    assert stopped == 3 and t.stop
    assert t.restored == [{"at": 1}] and t.best_epoch == 1


def test_early_stopping_in_min_mode_counts_only_real_improvements():
    t = FakeTrainer()
    stopped = _drive([EarlyStopping("valid_cost", "min", patience=3)], t,
                     [1.0, 0.8, 0.8, 0.9, 0.7, 0.71, 0.72, 0.75], key="valid_cost")
    assert stopped == 7 and t.restored == [{"at": 4}]


def test_early_stopping_after_a_resume_rebuilds_best_and_wait_from_the_history():
    """Best epoch 1 lies before the resume point: its state comes from the checkpoint
    loader, and patience counts the epochs already waited."""
    history = [{"epoch": 0, "valid_accuracy": 0.5}, {"epoch": 1, "valid_accuracy": 0.8},
               {"epoch": 2, "valid_accuracy": 0.7}]
    t = FakeTrainer(history=history)
    t.state_loader = lambda epoch: {"loaded": epoch}
    cb = EarlyStopping("valid_accuracy", "max", patience=2)
    cb.on_train_begin(t)
    logs = {"epoch": 3, "valid_accuracy": 0.75}
    cb.on_epoch_end(3, logs, t)
    assert t.stop
    cb.on_train_end(t)
    assert t.restored == [{"loaded": 1}]


def test_a_missing_monitored_metric_is_an_error_and_mode_is_explicit():
    t = FakeTrainer()
    with pytest.raises(KeyError, match="monitored metric 'valid_accuracy' is not in"):
        _drive([EarlyStopping("valid_accuracy", "max", 2)], t, [0.5], key="train_accuracy")
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        EarlyStopping("valid_accuracy", "maximum", 2)
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping("valid_accuracy", "max", 0)


def test_plateau_schedule_halves_after_n_flat_epochs_and_stops_after_the_fall():
    sched = HalveOnPlateau(0.8, patience=1, factor=4)
    t = FakeTrainer(schedule=sched)
    seen = []

    class Rate:   # what the next epoch would train at
        def on_train_begin(self, trainer):
            pass

        def on_epoch_end(self, epoch, logs, trainer):
            seen.append(trainer.schedule(epoch + 1))

        def on_train_end(self, trainer):
            pass
    # improved, improved, flat (halve), improved, flat (halve: 0.8 / 4, stop)
    stopped = _drive([PlateauSchedule("valid_cost", "min"), Rate()], t,
                     [1.0, 0.9, 0.95, 0.8, 0.85, 0.7], key="valid_cost")
    assert stopped == 4 and t.stop
    assert seen == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2])


def test_progress_logger_draws_on_a_terminal_and_logs_each_epoch(caplog):
    import io
    import logging

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, t = Tty(), FakeTrainer()
    t.epoch, t.cfg = 3, type("Cfg", (), {"epochs": 10})()
    with caplog.at_level(logging.INFO, logger="distnn.train.callbacks"):
        cb = ProgressLogger(stream=out, min_interval=0.0)
        cb.on_train_begin(t)
        cb.on_progress(50, 100, t)
        assert "epoch 3 of 0..9" in out.getvalue() and "50%" in out.getvalue()
        assert "ex/s" in out.getvalue()                 # the rate, with the ETA
        cb.on_epoch_end(3, {"batch_cost": 0.25, "valid_accuracy": 0.9, "lr": 0.1,
                            "examples_per_second": 1234.0}, t)
        t.epoch = 4
        cb.on_progress(10, 100, t)                      # a run ETA after one epoch
        assert "(run: ~" in out.getvalue().rsplit("epoch 4", 1)[1]
    assert "epoch 3  batch_cost 0.2500  valid_accuracy 90.00%  lr 0.1  1234 ex/s" in caplog.text
    quiet = io.StringIO()
    ProgressLogger(stream=quiet).on_progress(50, 100, t)
    assert quiet.getvalue() == ""                      # not a terminal: no bar
    with caplog.at_level(logging.WARNING, logger="distnn.train.callbacks"):
        ProgressLogger(stream=Tty()).on_progress(50, 100, t)   # -q: no bar either


def test_progress_lines_where_there_is_no_terminal(caplog):
    """stderr not a terminal (a log file, `ray job logs`): a progress line every `every`
    seconds within an epoch, where a terminal would show the bar (issue 42)."""
    import io
    import logging
    import time
    from types import SimpleNamespace

    from distnn.train.callbacks import ProgressLogger
    cb = ProgressLogger(stream=io.StringIO(), every=0.0)
    assert not cb.bar and cb.every == 0.0
    trainer = SimpleNamespace(epoch=2, cfg=SimpleNamespace(epochs=5))
    with caplog.at_level(logging.INFO, logger="distnn.train.callbacks"):
        for done in (0, 100, 200):
            cb.on_progress(done, 1000, trainer)
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if "examples (" in r.getMessage()]
    assert lines and lines[-1].startswith("epoch 2 of 0..4: 200 of 1000 examples (20%)")
    assert "ex/s, epoch ~" in lines[-1]
    assert ProgressLogger(stream=io.StringIO(), bar=False).every is None   # asked: none
