"""One error type for the flash tool: which step failed, why, and what to do about it."""

from __future__ import annotations


class FlashError(Exception):
    """A failure the user can act on. `step` names the step, `hint` says what to try next.

    `retryable` marks a lost connection mid-step (typically the board's watchdog resetting it while
    the tool holds it in the raw REPL): reconnecting and carrying on is the right answer.
    """

    def __init__(self, step: str, message: str, hint: str = "", *, retryable: bool = False) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.hint = hint
        self.retryable = retryable

    def __str__(self) -> str:
        text = f"{self.step}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text
