"""The replica's timer table (consensus/timeouts.py): arming, firing, holds, and a clock that never goes back."""

from consensus.timeouts import Timeouts, Timer


def test_time_is_unknown_before_the_first_tick_and_never_goes_back():
    timeouts = Timeouts()
    assert not timeouts.started and timeouts.now_ms is None and timeouts.clock_ms == 0
    assert timeouts.advance(1_000) == 1_000 and timeouts.started
    assert timeouts.advance(900) == 1_000, "an earlier tick does not move time back"
    assert timeouts.clock_ms == 1_000


def test_a_timer_fires_at_its_deadline_not_before():
    timeouts = Timeouts()
    timeouts.advance(1_000)
    assert not timeouts.armed(Timer.PROGRESS) and not timeouts.fired(Timer.PROGRESS)
    timeouts.start(Timer.PROGRESS, 300)
    assert timeouts.deadline_ms(Timer.PROGRESS) == 1_300
    timeouts.advance(1_299)
    assert timeouts.armed(Timer.PROGRESS) and not timeouts.fired(Timer.PROGRESS)
    timeouts.advance(1_300)
    assert timeouts.fired(Timer.PROGRESS)
    timeouts.stop(Timer.PROGRESS)
    assert not timeouts.armed(Timer.PROGRESS) and not timeouts.fired(Timer.PROGRESS)


def test_due_is_true_when_not_armed_or_fired():
    """A periodic timer runs at once the first time (not armed), then every period."""
    timeouts = Timeouts()
    timeouts.advance(0)
    assert timeouts.due(Timer.SWEEP)
    timeouts.start(Timer.SWEEP, 50)
    assert not timeouts.due(Timer.SWEEP)
    timeouts.advance(50)
    assert timeouts.due(Timer.SWEEP)


def test_a_hold_runs_until_its_deadline():
    timeouts = Timeouts()
    timeouts.advance(10)
    assert not timeouts.running(Timer.CHECK_ALL_SIGNATURES)
    timeouts.start(Timer.CHECK_ALL_SIGNATURES, 30)
    assert timeouts.running(Timer.CHECK_ALL_SIGNATURES)
    timeouts.advance(39)
    assert timeouts.running(Timer.CHECK_ALL_SIGNATURES)
    timeouts.advance(40)
    assert not timeouts.running(Timer.CHECK_ALL_SIGNATURES)


def test_timers_armed_before_the_first_tick_count_from_zero():
    timeouts = Timeouts()
    timeouts.start(Timer.CATCH_UP, 200)
    assert timeouts.deadline_ms(Timer.CATCH_UP) == 200 and timeouts.running(Timer.CATCH_UP)
    timeouts.start(Timer.BODIES, 100, since_ms=0)
    timeouts.advance(5_000)
    assert timeouts.fired(Timer.BODIES) and timeouts.fired(Timer.CATCH_UP)


def test_each_timer_is_independent():
    timeouts = Timeouts()
    timeouts.advance(0)
    timeouts.start(Timer.RETRANSMIT, 10)
    timeouts.start(Timer.PROBE, 20)
    timeouts.advance(15)
    assert timeouts.fired(Timer.RETRANSMIT) and not timeouts.fired(Timer.PROBE)
    timeouts.stop(Timer.RETRANSMIT)
    assert timeouts.armed(Timer.PROBE)
