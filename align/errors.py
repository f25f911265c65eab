"""One exception type for every user-facing error, so the CLI can print it without a traceback."""

from __future__ import annotations


class AlignError(Exception):
    """A problem with the user's input (recipe, data file, model reference) explained in one message."""


class TrainingDiverged(AlignError):
    """A loss, gradient norm, logit or weight became NaN/inf: training stops before it is applied or saved.

    Low-level checks raise it with `what` only; the stage's loop re-raises it with `at(...)`, adding
    what a user needs to act on it (stage, step, last finite loss, the setting to change).
    """

    def __init__(self, what: str, stage: str | None = None, step: int | None = None,
                 last_loss: tuple[int, float] | None = None, hint: str | None = None):
        self.what, self.stage, self.step, self.last_loss, self.hint = what, stage, step, last_loss, hint
        if stage is None:
            super().__init__(f"training diverged: {what}")
            return
        last = (f"last finite loss {last_loss[1]:.4g} at step {last_loss[0]}" if last_loss
                else "no finite loss logged before it")
        super().__init__(
            f"{stage}: training diverged at step {step}: {what} ({last}); {hint or 'lower the learning rate'}. "
            f"The stage is not marked complete and nothing from step {step} on was saved"
        )

    def at(self, stage: str, step: int, last_loss: tuple[int, float] | None, hint: str) -> TrainingDiverged:
        """The same divergence, placed in its stage and step."""
        return TrainingDiverged(self.what, stage, step, last_loss, hint)
