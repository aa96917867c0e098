"""The per-epoch Rich bar (off unless stdout is a terminal) and the step lines written at a bounded rate."""

from __future__ import annotations

import io

from vertseg.training.progress import EpochProgress, StepReporter


def test_progress_is_silent_when_not_a_terminal():
    stream = io.StringIO()
    with EpochProgress(2, 3, stream=stream) as progress:
        progress.step(0, 1, {"loss": 1.0})
    assert not progress.enabled and stream.getvalue() == ""


def test_progress_on_a_terminal_shows_epoch_steps_and_loss_then_clears():
    stream = io.StringIO()
    with EpochProgress(2, 3, enabled=True, stream=stream) as progress:
        for epoch in range(2):
            for iteration in range(1, 4):
                progress.step(epoch, iteration, {"loss": 0.25})
    text = stream.getvalue()
    assert "epoch 2/2" in text and "3/3" in text and "loss 0.2500" in text
    assert text.endswith("\x1b[2K")  # transient: the bar is erased when training ends


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_steps_are_reported_first_then_every_n_steps_or_after_the_interval():
    clock = FakeClock()
    reporter = StepReporter(epochs=2, steps_per_epoch=250, every=10, seconds=20, clock=clock)
    reported = []
    for step in range(1, 31):
        clock.now += 1.0 if step <= 12 else 7.0  # fast steps, then laptop-slow ones
        if reporter.report(0, step, step, {"loss": 0.5}) is not None:
            reported.append(step)
    # the first step at once; 10, 20 and 30 by count; 15, 18, 23, 26 and 29 after 20 s (of 7 s steps) without one
    assert reported == [1, 10, 15, 18, 20, 23, 26, 29, 30]


def test_step_line_has_step_of_epoch_loss_rate_and_epoch_eta():
    clock = FakeClock()
    reporter = StepReporter(epochs=100, steps_per_epoch=250, every=10, step=500, clock=clock)  # resumed at step 500
    clock.now += 20.0
    line = reporter.report(2, 10, 510, {"loss": 0.1234})
    assert line == "epoch 3/100 step 10/250 | loss 0.1234 | 0.50 steps/s | epoch ETA 8:00"
    clock.now += 2.0
    assert reporter.report(2, 11, 511, {"loss": 0.2}) is None
