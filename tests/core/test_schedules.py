import pytest

from distnn.core import schedules


def test_each_schedule_follows_its_formula():
    assert schedules.parse("constant", 0.5)(7.3) == 0.5
    s = schedules.parse("step:10:0.5", 1.0)
    assert [s(e) for e in (0, 9.9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    e = schedules.parse("exponential:0.9", 2.0)
    assert e(3) == pytest.approx(2.0 * 0.9 ** 3)
    i = schedules.parse("inverse-time:0.5", 1.0)
    assert i(4) == pytest.approx(1.0 / 3.0)


def test_cosine_falls_as_half_a_cosine_to_its_floor_then_stays():
    import math
    c = schedules.parse("cosine:10", 0.2)
    assert c(0) == 0.2 and c(9.99) == pytest.approx(0.1 * (1 + math.cos(math.pi * 9 / 10)))
    assert c(5) == pytest.approx(0.1) and c(10) == 0.0 and c(50) == 0.0
    assert [c(e) for e in range(11)] == sorted((c(e) for e in range(11)), reverse=True)
    f = schedules.parse("cosine:4:0.1", 1.0)
    assert f(2) == pytest.approx(0.1 + 0.9 * 0.5) and f(4) == pytest.approx(0.1) == f(9)
    assert f.spec == "cosine:4:0.1" and schedules.parse(f.spec, 1.0)(3) == f(3)
    w = schedules.parse("cosine:10", 1.0, warmup=2.0)     # warm-up, then the cosine
    assert w(1.0) == pytest.approx(0.5 * c(1) / 0.2) and w(3) == pytest.approx(c(3) / 0.2)


def test_warmup_is_linear_then_hands_over():
    s = schedules.parse("step:10:0.1", 1.0, warmup=2.0)
    assert s(0.5) == pytest.approx(0.25)
    assert s(1.0) == pytest.approx(0.5)
    assert s(2.0) == 1.0 and s(12) == pytest.approx(0.1)


def test_a_warm_up_epochs_steps_take_that_epochs_rate():
    # the trainer's last step of warm-up epoch 0 is done at t = 1.0: epoch 0's rate, fully
    # warmed, not epoch 1's (0.5 here)
    s = schedules.parse("exponential:0.5", 1.0, warmup=1.0)
    assert s.during(0, 1.0) == 1.0 and s.during(0, 0.25) == pytest.approx(0.25)
    assert s.during(1, 0.5) == s(1.5) == 0.5
    w = schedules.parse("step:2:0.1", 1.0, warmup=4.0)
    assert w.during(1, 1.0) == pytest.approx(0.5) and w.during(2, 0.5) == pytest.approx(0.0625)


def test_plateau_halves_after_patience_and_finishes_at_factor():
    s = schedules.parse("plateau:2:8", 1.0)
    seen = []
    for improved in [True, False, False, False, True, False, False, False, False]:
        s.on_epoch_end(improved)
        seen.append(s(0))
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert s.finished
    t = schedules.parse("plateau:2:8", 1.0)
    t.load_state_dict(s.state_dict())
    assert t(0) == 0.125 and t.finished


def test_plateau_default_factor_is_1024():
    s = schedules.parse("plateau:1", 1.0)
    for _ in range(9):
        s.on_epoch_end(False)
    assert not s.finished
    s.on_epoch_end(False)
    assert s.finished and s(0) == pytest.approx(1 / 1024)


@pytest.mark.parametrize("spec,match", [("onecycle", "unknown schedule"),
                                        ("step:10", "takes 2-2"),
                                        ("step:0:0.5", "interval"), ("exponential:x", "non-numeric"),
                                        ("exponential:1.5", "factor"), ("cosine", "takes 1-2"),
                                        ("cosine:0", "whole number"),
                                        ("cosine:2.5", "whole number"),
                                        ("cosine:10:1.5", "floor")])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        schedules.parse(spec, 0.1)
