"""What `align plan` returns per stage: named memory terms, notes, and suggested changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from align.plan.memory import Term


@dataclass
class Suggestion:
    """A change to the recipe and the estimate with it applied."""

    label: str
    overrides: list[str]
    total: float
    fits: bool


@dataclass
class StageEstimate:
    stage: str
    kind: str  # training | ppo | generation | none
    terms: list[Term]
    notes: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    knobs: dict[str, Any] = field(default_factory=dict)  # setting -> dotted path in the section (for suggestions)

    def phase_totals(self) -> dict[str, float]:
        phases: dict[str, float] = {}
        for t in self.terms:
            if t.phase != "resident":
                phases[t.phase] = phases.get(t.phase, 0.0) + t.bytes
        return phases

    @property
    def peak_phase(self) -> str | None:
        phases = self.phase_totals()
        return max(phases, key=phases.get) if phases else None

    @property
    def total(self) -> float:
        resident = sum(t.bytes for t in self.terms if t.phase == "resident")
        return resident + max(self.phase_totals().values(), default=0.0)

    def term(self, name: str) -> float:
        """Bytes of the first term whose name starts with `name` (0 if none): handy in tests."""
        return next((t.bytes for t in self.terms if t.name.startswith(name)), 0.0)

