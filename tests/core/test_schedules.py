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


def test_warmup_is_linear_then_hands_over():
    s = schedules.parse("step:10:0.1", 1.0, warmup=2.0)
    assert s(0.5) == pytest.approx(0.25)
    assert s(1.0) == pytest.approx(0.5)
    assert s(2.0) == 1.0 and s(12) == pytest.approx(0.1)


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


@pytest.mark.parametrize("spec,match", [("cosine", "unknown schedule"), ("step:10", "takes 2-2"),
                                        ("step:0:0.5", "interval"), ("exponential:x", "non-numeric"),
                                        ("exponential:1.5", "factor")])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        schedules.parse(spec, 0.1)
