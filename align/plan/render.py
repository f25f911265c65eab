"""Rendering `align plan`: sizes in and out, and the rich tables of each stage's terms and suggestions."""

from __future__ import annotations

import re
from typing import Any

from align.errors import AlignError
from align.plan.estimate import StageEstimate
from align.plan.memory import GIB, KIB, MIB


def parse_size(text: str) -> float:
    """'8GiB' / '8G' / '8' (binary: GiB), '24GB' (decimal, as GPUs are sold), '16000MiB' -> bytes."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(?:([kmgt])(i?)(b?))?", (text or "").strip().lower())
    if not m:
        raise AlignError(f"--gpu-memory {text!r}: expected a size such as 8GiB, 24GB or 16000MiB")
    value, unit, binary, byte = m.groups()
    power = {"k": 1, "m": 2, "g": 3, "t": 4}[unit or "g"]
    base = 1000 if byte and not binary else 1024
    return float(value) * base**power


def format_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / KIB:.0f} KiB"


def render(estimates: list[StageEstimate], budget: float | None, device: str, console: Any = None) -> None:
    """Rich tables: the terms of each stage, its total, and what would make it fit."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
            console = Console(width=150)
    for est in estimates:
        peak = est.peak_phase
        table = Table(title=f"{est.stage} ({est.kind}) - peak {'GPU' if device == 'cuda' else 'CPU RAM'} memory",
                      title_justify="left")
        for col, justify in (("term", "left"), ("phase", "left"), ("memory", "right"), ("note", "left")):
            table.add_column(col, justify=justify)
        for t in est.terms:
            style = "dim" if t.phase not in ("resident", peak) else None
            table.add_row(t.name, t.phase, format_bytes(t.bytes), t.note, style=style)
        verdict = ""
        if budget is not None:
            verdict = f"fits in {format_bytes(budget)}" if est.total <= budget else f"does NOT fit in {format_bytes(budget)}"
        table.add_row("[bold]total (peak)[/bold]", peak or "", f"[bold]{format_bytes(est.total)}[/bold]", verdict)
        console.print(table)
        for note in est.notes:
            console.print(f"  - {note}")
        if est.suggestions:
            sug = Table(title=f"{est.stage}: changes that reduce the peak", title_justify="left")
            for col in ("change", "recipe settings", "new estimate", "fits"):
                sug.add_column(col)
            for s in est.suggestions:
                sug.add_row(s.label, " ".join(s.overrides), format_bytes(s.total), "yes" if s.fits else "no")
            console.print(sug)
    if device == "cuda":
        console.print("Estimates are for one CUDA GPU (bf16 where precision is auto); the CUDA context is not "
                      "counted. Dimmed rows belong to a phase that is not the peak.")
