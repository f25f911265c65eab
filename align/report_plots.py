"""The report's PNG plots (matplotlib, headless): training curves, per-K accuracy bars, gains with intervals.

Each function writes one PNG and returns its path, or None when there is nothing to draw. Deciding whether
a series is long enough to be worth a plot is the report's job (`align.report`), not these functions'.
"""

from __future__ import annotations

from pathlib import Path

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def moving_average(ys: list[float], min_points: int = 8) -> list[float] | None:
    """Trailing mean over a window of ~1/8 of the run (at least 3 points), or None for short series.

    PPO logs one batch of rollouts per step, so per-step scores are noisy; the trend is what matters.
    """
    if len(ys) < min_points:
        return None
    window = max(3, len(ys) // 8)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (reports are written on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write a finished figure as a PNG and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def plot_lines(path: Path, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str = "step",
               twin: str | None = None) -> Path | None:
    """One PNG with a line per series (the `twin` series on a second y-axis); long noisy series are drawn
    faintly under their moving average."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    axes = {name: ax for name in series}
    if twin and twin in series and len(series) > 1:
        axes[twin] = ax.twinx()
    for (name, points), color in zip(series.items(), COLORS):
        xs, ys = zip(*points)
        smooth = moving_average(list(ys))
        faint = smooth is not None
        axes[name].plot(xs, ys, label=None if faint else name, color=color, alpha=0.35 if faint else 1.0,
                        marker="." if len(xs) < 40 else None)
        if faint:
            axes[name].plot(xs, smooth, label=f"{name} (moving avg)", color=color, linewidth=2)
        axes[name].set_ylabel(name, color=color if twin else "black")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    handles = [h for a in set(axes.values()) for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in set(axes.values()) for lab in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_bars(path: Path, title: str, groups: dict[str, dict[str, float]]) -> Path | None:
    """Grouped bars: one group per name (a policy, a K), one bar per metric, each labelled with its value."""
    if not groups:
        return None
    plt = _pyplot()
    metrics = sorted({m for g in groups.values() for m in g})
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    width = 0.8 / max(len(metrics), 1)
    for j, metric in enumerate(metrics):
        xs = [i + j * width for i in range(len(groups))]
        ys = [groups[g].get(metric, 0.0) for g in groups]
        bars = ax.bar(xs, ys, width=width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(groups))], list(groups))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_gains(path: Path, title: str, gains: dict[str, dict[str, float]]) -> Path | None:
    """One bar per policy: its gain over the baseline, with the bootstrap 95% interval as an error bar."""
    if not gains:
        return None
    plt = _pyplot()
    names = list(gains)
    ys = [gains[n]["gain"] for n in names]
    errs = [[y - gains[n]["ci_low"] for n, y in zip(names, ys)], [gains[n]["ci_high"] - y for n, y in zip(names, ys)]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    bars = ax.bar(range(len(names)), ys, yerr=errs, capsize=6, color="tab:green", alpha=0.8)
    ax.bar_label(bars, fmt="%+.3f", fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
