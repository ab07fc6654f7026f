"""One self-contained HTML page: latency, win share, quality, canary agreement and input drift.

Every chart is a PNG embedded as base64 next to the table of the numbers it draws, so the file can be
mailed or attached to an issue as is. matplotlib is imported only here, lazily, and drawn on an Agg
canvas without pyplot's global state (safe in tests and on machines without a display).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.replay import NO_MODEL
from ops.latency import percentile

OFFICIAL = "official"
MAX_TABLE_ROWS = 200


# --- frames from the decision log ------------------------------------------------------------------------


def latency_frame(decisions: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """model_id, latency_ms (score arrival - request arrival; ``official``: decision - arrival)."""
    rows = []
    for d in decisions:
        received = d.get("received_at_ms")
        if received is None or d.get("decided_at_ms") is None:
            continue
        rows.append({"model_id": OFFICIAL, "latency_ms": float(d["decided_at_ms"] - received)})
        for s in d.get("scores", ()):
            if not s.get("duplicate"):
                rows.append({"model_id": s["model_id"], "latency_ms": float(s["arrived_at_ms"] - received)})
    return pd.DataFrame(rows, columns=["model_id", "latency_ms"])


def wins_frame(decisions: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """request_id, decided_at_ms, model_id of the official answer (``(none)`` for no answer)."""
    rows = [
        {
            "request_id": d["request_id"],
            "decided_at_ms": d["decided_at_ms"],
            "model_id": d["result"]["model_id"] or NO_MODEL,
        }
        for d in decisions
        if d.get("result") is not None
    ]
    return pd.DataFrame(rows, columns=["request_id", "decided_at_ms", "model_id"])


# --- tables ----------------------------------------------------------------------------------------------


def latency_table(latency: pd.DataFrame) -> pd.DataFrame:
    out = []
    for mid, g in latency.groupby("model_id", sort=True):
        v = sorted(g["latency_ms"].astype(float))
        out.append(
            {
                "model_id": mid,
                "count": len(v),
                "p50_ms": percentile(v, 50),
                "p90_ms": percentile(v, 90),
                "p99_ms": percentile(v, 99),
                "max_ms": v[-1],
            }
        )
    return pd.DataFrame(out, columns=["model_id", "count", "p50_ms", "p90_ms", "p99_ms", "max_ms"])


def wins_table(wins: pd.DataFrame) -> pd.DataFrame:
    counts = wins["model_id"].value_counts().sort_index()
    return pd.DataFrame(
        {"model_id": counts.index, "wins": counts.to_numpy(), "share": counts.to_numpy() / max(1, len(wins))}
    )


def win_share_over_time(wins: pd.DataFrame, bucket_ms: int | None = None, buckets: int = 20) -> pd.DataFrame:
    """Share of official answers per model per time bucket (rows: bucket start, columns: models)."""
    if wins.empty:
        return pd.DataFrame()
    t = wins["decided_at_ms"].astype("int64")
    if bucket_ms is None:
        span = int(t.max() - t.min()) + 1
        bucket_ms = max(1, math.ceil(span / buckets))
    start = (t // bucket_ms) * bucket_ms
    counts = pd.crosstab(start, wins["model_id"])
    return counts.div(counts.sum(axis=1), axis=0)


# --- page ------------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _seconds(ms: pd.Series, origin: float) -> pd.Series:
    return (ms.astype(float) - origin) / 1000.0


def _latency_chart(latency: pd.DataFrame) -> str:
    fig, ax = _figure("Latency per model (from request arrival)", "model", "ms")
    groups = [
        (mid, g["latency_ms"].astype(float).to_numpy()) for mid, g in latency.groupby("model_id", sort=True)
    ]
    ax.boxplot([v for _, v in groups], tick_labels=[m for m, _ in groups], showfliers=True)
    return _png(fig)


def _events(ax: Any, events: Mapping[str, int] | None, origin: float) -> None:
    """The loop's steps (label -> epoch ms) as labelled vertical lines, on the chart's time axis."""
    for i, (label, at_ms) in enumerate(sorted((events or {}).items(), key=lambda e: e[1])):
        x = (float(at_ms) - origin) / 1000.0
        ax.axvline(x, color="black", linestyle=":", linewidth=1)
        ax.annotate(label, (x, 1.0 - 0.09 * (i % 4)), xycoords=("data", "axes fraction"), fontsize="x-small",
                    rotation=0, ha="left", va="top", xytext=(2, -2), textcoords="offset points")  # fmt: skip


def _wins_chart(share: pd.DataFrame, events: Mapping[str, int] | None = None) -> str:
    fig, ax = _figure("Share of official answers over time", "time since start (s)", "share")
    origin = float(share.index.min())
    x = _seconds(pd.Series(share.index), origin)
    ax.stackplot(x, *[share[c].to_numpy() for c in share.columns], labels=[str(c) for c in share.columns])
    ax.set_ylim(0, 1)
    _events(ax, events, origin)
    ax.legend(loc="upper left", fontsize="small", ncol=min(5, len(share.columns)))
    return _png(fig)


def _lines_chart(
    frame: pd.DataFrame,
    column: str,
    title: str,
    ylabel: str,
    floor: float | None = None,
    events: Mapping[str, int] | None = None,
) -> str:
    fig, ax = _figure(title, "window start, time since first window (s)", ylabel)
    origin = float(frame["window_start_ms"].min())
    _events(ax, events, origin)
    for mid, g in frame.groupby("model_id", sort=True):
        ax.plot(_seconds(g["window_start_ms"], origin), g[column].astype(float), marker="o", label=str(mid))
    if floor is not None:
        ax.axhline(floor, color="red", linestyle="--", linewidth=1, label=f"alert below {floor:g}")
    ax.legend(loc="lower left", fontsize="small")
    return _png(fig)


def _drift_chart(drift: pd.DataFrame, psi_alert: float | None) -> str:
    fig, ax = _figure("Input drift per feature (recent vs reference)", "feature", "PSI")
    ax.bar(drift["feature"].astype(str), drift["psi"].astype(float).fillna(0.0))
    if psi_alert is not None:
        ax.axhline(psi_alert, color="red", linestyle="--", linewidth=1, label=f"alert above {psi_alert:g}")
        ax.legend(loc="upper right", fontsize="small")
    ax.tick_params(axis="x", labelrotation=30)
    return _png(fig)


def _table(df: pd.DataFrame) -> str:
    shown = df.head(MAX_TABLE_ROWS)
    more = (
        f"<p class='note'>{len(df) - MAX_TABLE_ROWS} more rows not shown.</p>"
        if len(df) > MAX_TABLE_ROWS
        else ""
    )
    return shown.to_html(index=False, border=0, na_rep="–", float_format=lambda x: f"{x:.4g}") + more


def _section(title: str, img: str | None, table: pd.DataFrame | None, note: str = "") -> str:
    parts = [f"<section><h2>{html.escape(title)}</h2>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if img is None:
        parts.append("<p class='empty'>No data.</p>")
    else:
        parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{img}'>")
    if table is not None and not table.empty:
        parts.append(_table(table))
    parts.append("</section>")
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.7em; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; } img { max-width: 100%; } .note, .empty { color: #666; }
"""


def render_report(
    *,
    latency: pd.DataFrame | None = None,
    wins: pd.DataFrame | None = None,
    quality: pd.DataFrame | None = None,
    canary: pd.DataFrame | None = None,
    drift: pd.DataFrame | None = None,
    title: str = "rendezvous: model evaluation",
    psi_alert: float | None = None,
    agreement_min: float | None = None,
    generated_at: str = "",
    events: Mapping[str, int] | None = None,
) -> str:
    """The page as text. Inputs: latency_frame, wins_frame, quality.quality_windows,
    drift.score_drift, drift.input_drift; a missing or empty one gives a section saying "No data".
    ``events`` (label -> epoch ms, e.g. the closed loop's degrade, fallback, retrain, shadow, promotion)
    are drawn as vertical lines on the charts over time and listed in a timeline table."""
    sections = []
    if events:
        first = min(events.values())
        timeline = pd.DataFrame(
            [(k, v, (v - first) / 1000.0) for k, v in sorted(events.items(), key=lambda e: e[1])],
            columns=["step", "at_ms", "seconds_after_first"],
        )
        sections.append(
            "<section><h2>Timeline</h2>\n<p class='note'>The dotted lines on the charts below.</p>\n"
            f"{_table(timeline)}</section>"
        )
    if latency is not None and not latency.empty:
        sections.append(_section("Latency per model", _latency_chart(latency), latency_table(latency)))
    else:
        sections.append(_section("Latency per model", None, None))
    if wins is not None and not wins.empty:
        share = win_share_over_time(wins)
        sections.append(_section("Win share over time", _wins_chart(share, events), wins_table(wins)))
    else:
        sections.append(_section("Win share over time", None, None))
    if quality is not None and not quality.empty:
        q = quality[quality["auc"].notna()] if "auc" in quality else quality
        img = _lines_chart(q, "auc", "ROC AUC per window", "AUC", events=events) if not q.empty else None
        sections.append(_section("Quality over time", img, quality, "official = what callers got."))
    else:
        sections.append(_section("Quality over time", None, None))
    if canary is not None and not canary.empty:
        c = canary[canary["agreement"].notna()]
        img = _lines_chart(
            c, "agreement", "Agreement with the canary per window", "agreement", agreement_min, events
        )
        sections.append(_section("Canary agreement", img if not c.empty else None, canary))
    else:
        sections.append(_section("Canary agreement", None, None))
    if drift is not None and not drift.empty:
        sections.append(_section("Drift per feature", _drift_chart(drift, psi_alert), drift))
    else:
        sections.append(_section("Drift per feature", None, None))
    stamp = f"<p class='note'>Generated {html.escape(generated_at)}.</p>" if generated_at else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{stamp}\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def write_report(path: str | Path, **frames: Any) -> Path:
    """``render_report`` to a file (written via a temporary name, so a reader never sees half a page)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(render_report(**frames), encoding="utf-8")
    tmp.replace(p)
    return p
