"""`make publish`: the committed documents' measured blocks are what docs/results/*.json renders, and
the renderer replaces only the blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import publish

ROOT = Path(__file__).resolve().parents[2]


def test_the_documents_blocks_are_what_the_committed_results_render() -> None:
    assert publish.check(ROOT) is None


def _step(rate: float, p50: float, p99: float) -> dict[str, Any]:
    return {
        "rate": rate, "achieved_rate": rate, "sent": 100, "answered": 100,
        "latency_ms": {"p50": p50, "p99": p99, "p99.9": p99 + 1}, "deadline_misses": 0,
        "by_reason": {"preferred": 100}, "cpu_percent": {"job": 40, "broker": 20, "loadgen": 5, "runner-gbt": 3},
        "state_bytes": 4096,
    }  # fmt: skip


BENCH = {
    "date": "2026-12-05 20:40",
    "commit": "abc1234",
    "uncommitted_changes": False,
    "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
    "args": {"rates": "100,250", "only": ["first_in_order"], "seconds": 15.0},
    "stack": {
        "first_in_order": {
            "policy": "policies/default.yaml",
            "steps": [_step(100, 10.0, 14.0), _step(250, 10.7, 41.3)],
            "idle": {"seconds": 20.0, "cpu_percent": {"job": 4, "broker": 2}},
        }
    },
}
PROFILE = {
    "date": "2026-12-05 19:43",
    "args": {"only": "job,runner", "seconds": 20.0, "warmup": 30.0, "backlog": 120000, "runner_rate": 500.0},
    "job": {
        "window_s": 20.0, "records_per_s": 1000, "cpu_percent_total": 50.0, "python_percent": 10.0,
        "stages": [{"stage": "checkpoints", "cpu_percent": 5.0, "us_per_record": 50.0}],
    },
    "runner": {"rate": 500.0, "cpu_percent_total": 20, "stages": [
        {"stage": "scoring", "cpu_percent": 4.0, "us_per_request": 80.0}]},
}  # fmt: skip
README = "# r\n\nabove\n\n<!-- measured: targets -->\nold figures\n<!-- /measured -->\n\nbelow\n"
PERFORMANCE = (
    "# p\n\nintro\n\n<!-- measured: bench -->\nold\n<!-- /measured -->\n\nmiddle\n\n"
    "<!-- measured: profile -->\n<!-- /measured -->\n<!-- measured: demo -->\n<!-- /measured -->\nend\n"
)


def _demo(rate: float, misses: int) -> dict[str, Any]:
    lat = {
        "count": 1000,
        "min": 1.0,
        "mean": 40.0,
        "p50": 43.5,
        "p90": 52.7,
        "p99": 56.5,
        "p99.9": 60.0,
        "max": 70.0,
    }
    leg = {"p50": 3.9, "p99": 8.8}
    return {
        "date": "2026-12-05 19:47", "commit": "abc1234", "uncommitted_changes": True,
        "machine": {"cpus": 2}, "args": {"count": 3000, "rate": rate, "bad": 20},
        "deadline_ms": 100, "target_within_deadline": 0.99,
        "report": {"sent": 3000, "answered": 3000, "target_rate": rate, "latency_ms": lat,
                   "deadline_checked": 3000, "deadline_misses": misses,
                   "legs_ms": {"to the job": leg, "in the job": leg, "back to the client": leg}},
    }  # fmt: skip


def _tree(tmp_path: Path, **results: dict[str, Any]) -> Path:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "README.md").write_text(README)
    (tmp_path / "docs" / "performance.md").write_text(PERFORMANCE)
    for name, data in ({"bench": BENCH, "profile": PROFILE} | results).items():
        (tmp_path / "docs" / "results" / f"{name}.json").write_text(json.dumps(data))
    return tmp_path


def test_each_block_is_replaced_and_the_text_outside_is_untouched(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert publish.check(root) is not None  # the fixtures' blocks hold hand-written text
    assert publish.render_all(root) == ["rendered README.md", "rendered docs/performance.md"]
    readme = (root / "README.md").read_text()
    before, block = readme.split("<!-- measured: targets -->\n")
    block, after = block.split("<!-- /measured -->\n")
    assert before == "# r\n\nabove\n\n" and after == "\nbelow\n"
    assert "old figures" not in block
    assert 'make bench BENCH_ARGS="--rates 100,250 --only first_in_order"' in block
    assert "2026-12-05 20:40, 2 CPUs, commit abc1234" in block
    assert "A partial run: without `clients`, `floor`, `job`" in block
    assert "| p50 <= 10 ms and p99 <= 25 ms at 250 requests/s" in block
    assert '| no | `make bench BENCH_ARGS="--only first_in_order"` |' in block
    assert "1,000 records/s in used 50 % of a core, 500 µs per record in" in block
    perf = (root / "docs" / "performance.md").read_text()
    assert perf.startswith("# p\n\nintro\n\n<!-- measured: bench -->\n") and perf.endswith("\nend\n")
    assert "\nmiddle\n" in perf and "\nold\n" not in perf
    assert "#### Whole stack, `first_in_order`" in perf and "| 250 | 250 | 100/100 | 11 | 41 |" in perf
    assert "Idle (20 s with no traffic" in perf
    assert "| checkpoints | 5.0 | 50.0 |" in perf and "| scoring | 4.0 | 80.0 |" in perf
    assert "No demo run is published yet" in perf
    assert publish.check(root) is None
    assert publish.render_all(root) == []  # rendering again changes nothing


def test_a_hand_edit_inside_a_block_fails_the_check_naming_the_block(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    publish.render_all(root)
    perf = root / "docs" / "performance.md"
    perf.write_text(perf.read_text().replace("| scoring | 4.0 |", "| scoring | 3.0 |"))
    problem = publish.check(root)
    assert problem is not None and problem.startswith("docs/performance.md: block 'profile' (line ")
    assert publish.main(["--check", "--root", str(root)]) == 1
    # Outside a block, the text is the author's.
    publish.render_all(root)
    perf.write_text(perf.read_text().replace("\nmiddle\n", "\nedited by hand\n"))
    assert publish.check(root) is None


def test_demo_runs_are_rows_of_both_documents(tmp_path: Path) -> None:
    root = _tree(tmp_path, **{"demo-833": _demo(833, 2815), "demo-100": _demo(100, 2)})
    publish.render_all(root)
    readme = (root / "README.md").read_text()
    assert (
        "| the demo at 100 requests/s: >= 99 % of answers within its 100 ms deadline | "
        "2,998 of 3,000 (99.93 %); p50 44, p99 56 ms | yes | `make demo` |"
    ) in readme
    assert "| the demo at 833 requests/s" in readme and "`python -m harness.demo --rate 833` |" in readme
    perf = (root / "docs" / "performance.md").read_text()
    rows = [line for line in perf.split("\n") if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["make demo", "python -m harness.demo --rate 833"]
    assert "| 3,000 of 3,000 | 44 / 53 / 56 | 2,998 of 3,000 (99.93 %), 100 ms | 3.9 / 8.8 |" in rows[0]


def test_a_missing_end_marker_is_an_error_naming_the_block_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "README.md").write_text("# r\n\n<!-- measured: targets -->\nno end\n")
    with pytest.raises(publish.PublishError, match=r"README.md:3: block 'targets' has no end marker"):
        publish.render_all(root)
    (root / "README.md").write_text(
        "<!-- measured: targets -->\n<!-- measured: other -->\n<!-- /measured -->\n"
    )
    with pytest.raises(publish.PublishError, match="block 'targets' has no end marker"):
        publish.check(root)


def test_a_missing_or_unknown_block_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "README.md").write_text("# r\n")
    with pytest.raises(publish.PublishError, match=r"README.md: no block 'targets'"):
        publish.render_all(root)
    (root / "README.md").write_text(README + "<!-- measured: tagrets -->\n<!-- /measured -->\n")
    with pytest.raises(publish.PublishError, match=r"unknown block 'tagrets'"):
        publish.render_all(root)


def test_a_missing_json_file_is_an_error_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "docs" / "results" / "profile.json").unlink()
    with pytest.raises(
        publish.PublishError, match=r"^docs/results/profile.json: no such file; run `make profile`"
    ):
        publish.render_all(root)
    assert (root / "README.md").read_text() == README
    assert publish.main(["--root", str(root)]) == 1


def test_copying_a_run_names_a_missing_source_and_names_a_demo_by_its_rate(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with pytest.raises(
        publish.PublishError, match=r"^var/bench/results.json: no such file \(written by `make bench`\)"
    ):
        publish.copy_runs(root, {"bench": None})
    (root / "var" / "demo").mkdir(parents=True)
    (root / "var" / "demo" / "summary.json").write_text(json.dumps(_demo(833, 10)))
    assert publish.copy_runs(root, {}, everything=True) == [
        "copied var/demo/summary.json -> docs/results/demo-833.json"
    ]
    # A run of only some parts would replace the whole published run: only when named.
    (root / "var" / "bench").mkdir(parents=True)
    (root / "var" / "bench" / "results.json").write_text(json.dumps(BENCH))
    (skipped, _) = publish.copy_runs(root, {}, everything=True)
    assert skipped.startswith("skipped var/bench/results.json: a partial run (without clients, floor, job,")
    assert publish.copy_runs(root, {"bench": None}) == [
        "copied var/bench/results.json -> docs/results/bench.json"
    ]
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(BENCH | {"date": "2026-12-06 10:00"}))
    assert publish.copy_runs(root, {"bench": other}) == ["copied elsewhere.json -> docs/results/bench.json"]
    assert json.loads((root / "docs" / "results" / "bench.json").read_text())["date"] == "2026-12-06 10:00"


def test_a_runs_command_names_only_the_options_it_changed() -> None:
    assert publish.bench_command(
        {"args": {"only": publish.bench.DEFAULT_PARTS.split(","), "seconds": 15.0}}
    ) == ("make bench")
    assert publish.bench_command({"args": {"only": ["job"], "backlog": 60000}}) == (
        'make bench BENCH_ARGS="--only job --backlog 60000"'
    )
    assert publish.bench_command({}) == "make bench (options not recorded)"
    assert publish.demo_command(
        {"args": {"rate": 833.0, "count": 25000, "policy": "policies/default.yaml"}}
    ) == ("python -m harness.demo --rate 833 --count 25000")
    assert publish.profile_command({"args": {"only": "runner", "runner_rate": 250.0}}) == (
        'make profile PROFILE_ARGS="--only runner --runner-rate 250"'
    )
