"""Accuracy-latency curves: Pareto fronts, curve dominance, and the PNG plot (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, Field


class CurvePoint(BaseModel):
    """One configuration of one system, measured on the benchmark's problems."""

    label: str = Field(..., description="Configuration, e.g. 'B=16 weighted_majority'.")
    latency_s: float = Field(..., ge=0, description="Mean per-problem latency (one request at a time).")
    accuracy: float = Field(..., ge=0, le=1, description="Share of problems answered correctly.")


def pareto_front(points: Sequence[CurvePoint]) -> list[CurvePoint]:
    """The points no other point beats: none is at most as slow and at least as accurate
    with one of the two strictly better. Sorted by latency."""
    front = []
    for p in points:
        dominated = any(
            q.latency_s <= p.latency_s and q.accuracy >= p.accuracy
            and (q.latency_s < p.latency_s or q.accuracy > p.accuracy)
            for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.latency_s, -p.accuracy))


def best_accuracy_within(points: Sequence[CurvePoint], latency_s: float) -> float | None:
    """The best accuracy a system reaches within ``latency_s`` (its curve as a step function
    of the latency allowed); None if none of its points is that fast."""
    within = [p.accuracy for p in points if p.latency_s <= latency_s]
    return max(within) if within else None


def dominance_violations(system: Sequence[CurvePoint],
                         peers: Mapping[str, Sequence[CurvePoint]]) -> list[dict]:
    """Peer points where ``system``'s curve lies below: at the peer's latency the system reaches
    less accuracy (or nothing at all). An empty list means the system's curve is at or above
    every peer's at every latency."""
    violations = []
    for peer, points in peers.items():
        for p in points:
            ours = best_accuracy_within(system, p.latency_s)
            if ours is None or ours < p.accuracy:
                violations.append({"peer": peer, "label": p.label, "latency_s": p.latency_s,
                                   "peer_accuracy": p.accuracy, "system_accuracy_within": ours})
    return violations


def plot_curves(curves: Mapping[str, Sequence[CurvePoint]], out: str | Path,
                title: str = "Accuracy against latency", markers_only: Collection[str] = ()) -> Path:
    """Draw one curve per system (points sorted by latency, each labelled; systems named in
    ``markers_only`` as unconnected points), ring the points on the Pareto front of all
    systems together, and save a PNG at ``out`` (folders created).

    Raises:
        ValueError: no system has a point.
    """
    if not any(curves.values()):
        raise ValueError("nothing to plot: every curve is empty")
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # files only: no display here, in CI or in a Ray job
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    everything = [p for points in curves.values() for p in points]
    front = {(p.latency_s, p.accuracy) for p in pareto_front(everything)}
    fig, ax = plt.subplots(figsize=(10.5, 5.5), dpi=120)
    markers = "osD^vP*Xh<>"
    for i, (system, points) in enumerate(curves.items()):
        if not points:
            continue
        ordered = sorted(points, key=lambda p: p.latency_s)
        xs, ys = [p.latency_s for p in ordered], [100 * p.accuracy for p in ordered]
        (line,) = ax.plot(xs, ys, marker=markers[i % len(markers)], label=system, linewidth=1.6,
                          linestyle="none" if system in markers_only else "-")
        for p in ordered:
            ax.annotate(p.label, (p.latency_s, 100 * p.accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=6.5, color=line.get_color())
    pareto = sorted(front)
    ax.scatter([x for x, _ in pareto], [100 * y for _, y in pareto], s=170, facecolors="none",
               edgecolors="black", linewidths=1.4, label="Pareto front (all systems)", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("mean latency per problem (s, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
