"""evaluation.report: a self-contained HTML page with one chart per section and the numbers next to it."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from evaluation.report import (
    latency_frame,
    latency_table,
    render_report,
    win_share_over_time,
    wins_frame,
    write_report,
)

SECTIONS = [
    "Latency per model",
    "Win share over time",
    "Quality over time",
    "Canary agreement",
    "Drift per feature",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decision(
    rid: str, received: int, decided: int, model: str | None, arrivals: dict[str, int]
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "received_at_ms": received,
        "decided_at_ms": decided,
        "result": {"model_id": model},
        "scores": [{"model_id": m, "arrived_at_ms": t, "duplicate": False} for m, t in arrivals.items()]
        + [{"model_id": "gbt", "arrived_at_ms": received + 999, "duplicate": True}],
    }


DECISIONS = [
    decision("a", 0, 10, "gbt", {"gbt": 10, "logreg": 30}),
    decision("b", 1000, 1070, "logreg", {"logreg": 1050, "gbt": 1080}),
    decision("c", 2000, 2100, None, {}),
    {"request_id": "orphan", "received_at_ms": None, "decided_at_ms": None, "result": None, "scores": []},
]


def frames() -> dict[str, pd.DataFrame]:
    quality = pd.DataFrame(
        {
            "window_start_ms": [0, 0, 1000, 1000],
            "window_end_ms": [1000, 1000, 2000, 2000],
            "model_id": ["gbt", "official", "gbt", "official"],
            "count": [10, 10, 12, 12],
            "accuracy": [0.9, 0.8, 0.7, 0.75],
            "auc": [0.91, 0.85, 0.6123, 0.8],
        }
    )
    canary = pd.DataFrame(
        {
            "window_start_ms": [0, 1000],
            "window_end_ms": [1000, 2000],
            "model_id": ["gbt", "gbt"],
            "count": [10, 12],
            "agreement": [0.95, 0.4567],
            "psi": [0.01, 0.9],
            "ks": [0.02, 0.5],
        }
    )
    drift = pd.DataFrame(
        {
            "feature": ["amount", "hour"],
            "n_reference": [100, 100],
            "n_recent": [50, 50],
            "psi": [0.7321, 0.01],
            "ks": [0.3, 0.02],
        }
    )
    return {
        "latency": latency_frame(DECISIONS),
        "wins": wins_frame(DECISIONS),
        "quality": quality,
        "canary": canary,
        "drift": drift,
    }


class Page(HTMLParser):
    """Checks tags nest and close properly, and collects sections, images and table cells."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: list[dict[str, Any]] = []
        self.cells: list[str] = []
        self._text: list[str] | None = None
        self.h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "section":
            self.sections.append({"title": "", "imgs": [], "tables": 0})
        elif tag == "img":
            self.sections[-1]["imgs"].append(dict(attrs)["src"])
        elif tag == "table":
            self.sections[-1]["tables"] += 1
        elif tag in ("td", "th"):
            self._text = []
        self.h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()
        if tag in ("td", "th") and self._text is not None:
            self.cells.append("".join(self._text).strip())
            self._text = None
        self.h2 = False

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)
        if self.h2:
            self.sections[-1]["title"] += data


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    assert p.stack == [], p.stack
    return p


def test_the_page_has_one_chart_and_one_table_per_section(tmp_path: Path) -> None:
    out = write_report(
        tmp_path / "sub" / "report.html", title="Eval <run 1>", psi_alert=0.25, agreement_min=0.9, **frames()
    )
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<title>Eval &lt;run 1&gt;</title>" in text  # escaped
    page = parse(text)
    assert [s["title"] for s in page.sections] == SECTIONS
    for s in page.sections:
        assert len(s["imgs"]) == 1 and s["tables"] == 1, s["title"]
        src = s["imgs"][0]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert text.count("<img") == 5
    # Self-contained: nothing to fetch (every image is inline, checked above; no scripts, styles or links).
    assert not re.search(r"<(script|link)\b|href=", text)
    # The numbers are in the tables.
    for number in ("0.6123", "0.4567", "0.7321"):
        assert number in page.cells, number
    assert {"gbt", "logreg", "official", "(none)"} <= set(page.cells)


def test_missing_inputs_give_empty_sections() -> None:
    page = parse(render_report(latency=frames()["latency"]))
    assert [s["title"] for s in page.sections] == SECTIONS
    assert [len(s["imgs"]) for s in page.sections] == [1, 0, 0, 0, 0]
    text = render_report()
    assert text.count("No data.") == 5 and "<img" not in text


def test_latency_and_wins_frames_from_decisions() -> None:
    lat = latency_frame(DECISIONS)
    assert sorted(map(tuple, lat.values.tolist())) == sorted(
        [("official", 10.0), ("gbt", 10.0), ("logreg", 30.0), ("official", 70.0), ("logreg", 50.0),
         ("gbt", 80.0), ("official", 100.0)]
    )  # fmt: skip
    table = latency_table(lat).set_index("model_id")
    assert table.loc["official", "count"] == 3 and table.loc["official", "p50_ms"] == 70.0
    assert table.loc["official", "max_ms"] == 100.0
    wins = wins_frame(DECISIONS)
    assert wins["model_id"].tolist() == ["gbt", "logreg", "(none)"]


def test_win_share_over_time() -> None:
    wins = pd.DataFrame({"decided_at_ms": [0, 10, 20, 1000, 1010], "model_id": ["a", "a", "b", "b", "b"]})
    share = win_share_over_time(wins, bucket_ms=1000)
    assert share.loc[0, "a"] == pytest.approx(2 / 3) and share.loc[1000, "b"] == 1.0
    assert (share.sum(axis=1).round(9) == 1.0).all()
    assert len(win_share_over_time(wins, buckets=5)) >= 2
    assert win_share_over_time(wins.iloc[0:0]).empty
