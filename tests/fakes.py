"""Small fakes shared by the unit tests."""

from __future__ import annotations


class Clock:
    """A clock a test moves by hand: ``clock.now += 0.5``; call it for the time."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
