"""The per-epoch Rich bar: off unless stdout is a terminal, so logs keep exactly one line per epoch."""

from __future__ import annotations

import io

from vertseg.training.progress import EpochProgress


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
