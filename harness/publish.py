"""`make publish`: the measured figures of README.md and docs/performance.md, from committed files.

1. Copies what a run wrote under var/ (git-ignored) into docs/results/ (committed), as it is:

   --bench [PATH]    var/bench/results.json   -> docs/results/bench.json     (`make bench`)
   --profile [PATH]  var/profile/profile.json -> docs/results/profile.json   (`make profile`)
   --demo [PATH]     var/demo/summary.json    -> docs/results/demo-RATE.json (`make demo`, at its rate)
   --faults [PATH]   var/faults/results.json  -> docs/results/faults.json    (`make faults`; kept, no
                                                                           document renders it yet)
   --all             each of the four above that exists (what `make publish` does), but a partial
                     run (`--only` some of the parts) only when named

   A source named on its own that does not exist is an error, and nothing is written.
2. Renders docs/results/*.json into the marked blocks of the documents (``DOCUMENTS``)::

       <!-- measured: NAME -->
       (generated: replaced whole)
       <!-- /measured -->

   Text outside the blocks is never touched; edit the text inside a block through its renderer.

``--check`` writes nothing: exit 1 with a line naming the first block that differs from what the
committed JSON renders (tests/unit/test_publish.py runs it, so a hand edit inside a block fails
`make test`). The targets are computed again from each run's measurements (``bench.targets``), so
they read as the current code reads them, each with the command that measures it.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import bench, demo, loadgen, profile

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("docs") / "results"
BEGIN = re.compile(r"^<!-- measured: ([a-z0-9-]+) -->$")
END = "<!-- /measured -->"


class PublishError(Exception):
    """What stops `make publish`, in one line naming the file or block."""


# --- 1. copying a run's JSON ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    option: str  # the command-line option
    default: Path  # what the command writes, relative to the repository
    command: str  # the command that writes it
    target: Callable[[dict[str, Any]], str]  # its name in docs/results/, from its content
    parts: str = ""  # the command's parts by default (its --only), comma-separated; "" if it has none


def _demo_name(data: dict[str, Any]) -> str:
    rate = (data.get("args") or {}).get("rate")
    if not isinstance(rate, int | float):
        raise PublishError("the demo summary has no args.rate: not written by harness/demo.py")
    return f"demo-{rate:.0f}.json"


def left_out(data: dict[str, Any], parts: str) -> list[str]:
    """The parts of ``parts`` a run did not run (by its recorded --only)."""
    ran = set(_items((data.get("args") or {}).get("only", parts)))
    return [p for p in _items(parts) if p not in ran]


def _items(v: Any) -> list[str]:
    return list(v) if isinstance(v, list) else [x.strip() for x in str(v).split(",") if x.strip()]


SOURCES = (
    Source(
        "bench", Path("var/bench/results.json"), "make bench", lambda _: "bench.json", bench.DEFAULT_PARTS
    ),
    Source(
        "profile",
        Path("var/profile/profile.json"),
        "make profile",
        lambda _: "profile.json",
        profile.parser().get_default("only"),
    ),
    Source("demo", demo.SUMMARY_JSON.relative_to(demo.REPO_ROOT), "make demo", _demo_name),
    Source("faults", Path("var/faults/results.json"), "make faults", lambda _: "faults.json"),
)


def _load(path: Path, shown: str) -> dict[str, Any]:
    """A JSON object from ``path`` (``shown``: its name in an error)."""
    if not path.is_file():
        raise PublishError(f"{shown}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PublishError(f"{shown}: not JSON ({e})") from e
    if not isinstance(data, dict):
        raise PublishError(f"{shown}: not a JSON object")
    return data


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def copy_runs(root: Path, chosen: dict[str, Path | None], everything: bool = False) -> list[str]:
    """Copy each chosen source (its default file where the path is None) into docs/results/; with
    ``everything``, every other source whose default file exists and is not a partial run (a run of
    only some parts is published only when named). Checks them all before writing any. Returns a line
    per file copied or skipped."""
    plan: list[tuple[Path, Path, str]] = []
    out = []
    for src in SOURCES:
        if src.option in chosen:
            path = chosen[src.option] or root / src.default
        elif everything and (root / src.default).is_file():
            path = root / src.default
        else:
            continue
        shown = _shown(path, root)
        try:
            data = _load(path, shown)
        except PublishError as e:
            raise PublishError(f"{e} (written by `{src.command}`)") from None
        missing = left_out(data, src.parts)
        if src.option not in chosen and missing:
            out.append(
                f"skipped {shown}: a partial run (without {', '.join(missing)}); --{src.option} publishes it"
            )
            continue
        plan.append((path, root / RESULTS / src.target(data), shown))
    for path, dest, shown in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        out.append(f"copied {shown} -> {dest.relative_to(root)}")
    return out


# --- 2. rendering the blocks ----------------------------------------------------------------------


def _results(root: Path, name: str, command: str) -> dict[str, Any]:
    path = root / RESULTS / name
    if not path.is_file():
        raise PublishError(f"{RESULTS / name}: no such file; run `{command}`, then `make publish`")
    return _load(path, str(RESULTS / name))


def command_of(ap: argparse.ArgumentParser, args: dict[str, Any] | None, plain: str, with_args: str) -> str:
    """The command a run's recorded arguments repeat: ``plain`` where they are the defaults, else
    ``with_args`` with {} replaced by the options that differ (a list and a comma-separated text
    compare as sets)."""
    if args is None:
        return f"{plain} (options not recorded)"
    defaults = {k: str(v) if isinstance(v, Path) else v for k, v in vars(ap.parse_args([])).items()}
    flags: list[str] = []
    for key, value in args.items():
        default = defaults.get(key)
        if isinstance(value, list) or isinstance(default, list):
            value = ",".join(value) if isinstance(value, list) else value
            if set(_items(value)) == set(_items(default)):
                continue
        elif value == default or _repo_path(default) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            flags += [flag, shlex.quote(shown)]
    return with_args.format(" ".join(flags)) if flags else plain


def _repo_path(v: Any) -> str | None:
    """A default path inside the repository as a run records it (relative), else None."""
    p = Path(str(v))
    return str(p.relative_to(REPO_ROOT)) if p.is_absolute() and p.is_relative_to(REPO_ROOT) else None


def provenance(data: dict[str, Any]) -> str:
    """'2026-12-05 20:40, 2 CPUs, commit 4199482 with uncommitted changes'."""
    cpus = (data.get("machine") or {}).get("cpus")
    commit = data.get("commit")
    if commit is None:
        code = "commit not recorded"
    elif data.get("uncommitted_changes"):
        code = f"commit {commit} with uncommitted changes"
    else:
        code = f"commit {commit}"
    return ", ".join(x for x in (data.get("date", "date not recorded"), cpus and f"{cpus} CPUs", code) if x)


def bench_command(data: dict[str, Any]) -> str:
    return command_of(bench.parser(), data.get("args"), "make bench", 'make bench BENCH_ARGS="{}"')


def profile_command(data: dict[str, Any]) -> str:
    return command_of(profile.parser(), data.get("args"), "make profile", 'make profile PROFILE_ARGS="{}"')


def demo_command(data: dict[str, Any]) -> str:
    return command_of(demo.parser(), data.get("args"), "make demo", "python -m harness.demo {}")


def _partial(data: dict[str, Any]) -> str:
    """What a bench run left out of `make bench`'s default parts ('' when nothing)."""
    missing = left_out(data, bench.DEFAULT_PARTS)
    return f" A partial run: without {', '.join(f'`{p}`' for p in missing)}." if missing else ""


def _bench_line(data: dict[str, Any]) -> str:
    return f"From `docs/results/bench.json`: `{bench_command(data)}`, {provenance(data)}.{_partial(data)}"


def _with_targets(data: dict[str, Any]) -> dict[str, Any]:
    return data | {"targets": bench.targets(data)} if data.get("stack") or data.get("job_capacity") else data


def _demo_runs(root: Path) -> list[dict[str, Any]]:
    """Every published demo run, by rate."""
    runs = []
    for path in sorted((root / RESULTS).glob("demo-*.json")):
        data = _load(path, str(path.relative_to(root)))
        if not isinstance(data.get("report"), dict) or not isinstance(data.get("args"), dict):
            raise PublishError(f"{path.relative_to(root)}: no report or args: not written by harness/demo.py")
        runs.append(data)
    return sorted(runs, key=lambda d: d["report"]["target_rate"])


def _within(d: dict[str, Any]) -> tuple[float | None, str]:
    r = d["report"]
    checked, misses = r["deadline_checked"], r["deadline_misses"]
    if not checked:
        return None, "no deadline checked"
    share = (checked - misses) / checked
    return share, f"{checked - misses:,} of {r['sent']:,} ({100 * share:.2f} %)"


def _demo_target(d: dict[str, Any]) -> dict[str, Any]:
    """A demo run as a row of the targets table."""
    share, measured = _within(d)
    goal = d.get("target_within_deadline", demo.TARGET_WITHIN_DEADLINE)
    lat = d["report"]["latency_ms"]
    return {
        "target": f"the demo at {d['report']['target_rate']:.0f} requests/s: >= {100 * goal:.0f} % of "
        f"answers within its {d['deadline_ms']} ms deadline",
        "measured": f"{measured}; p50 {bench._ms(lat['p50'])}, p99 {bench._ms(lat['p99'])} ms",
        "met": share is not None and share >= goal,
        "command": demo_command(d),
    }


def _demote(lines: list[str], level: str) -> list[str]:
    """The sections' '## ' headings one or more levels down, to sit under the document's own."""
    return [level + line[3:] if line.startswith("## ") else line for line in lines]


def render_targets(root: Path) -> str:
    """README: the targets of the published bench run and demos, each with its command; the profile's
    totals."""
    data = _results(root, "bench.json", "make bench")
    demos = _demo_runs(root)
    result = _with_targets(data)
    result["targets"] = [*result.get("targets", []), *(_demo_target(d) for d in demos)]
    lines = [_bench_line(data)]
    if demos:
        lines.append(
            "The demo: "
            + "; ".join(f"`docs/results/demo-{d['args']['rate']:.0f}.json`, {provenance(d)}" for d in demos)
            + "."
        )
    table = bench.targets_section(result, commands=True)[2:]
    lines += ["", *table] if table else ["", "It measured none of the targets.", ""]
    prof = _results(root, "profile.json", "make profile")
    job, runner = prof.get("job") or {}, prof.get("runner") or {}
    said = []
    if job.get("records_per_s"):
        said.append(
            f"the job alone draining requests with 4 scores at {job['records_per_s']:,} records/s in used "
            f"{job['cpu_percent_total']:.0f} % of a core, "
            f"{1e4 * job['cpu_percent_total'] / job['records_per_s']:.0f} µs per record in"
        )
    if runner.get("rate"):
        said.append(
            f"a runner at {runner['rate']:.0f} requests/s {runner['cpu_percent_total']} % of a core, "
            f"{1e4 * runner['cpu_percent_total'] / runner['rate']:.0f} µs per request"
        )
    if said:
        lines.append(
            f"Where the CPU goes (`docs/results/profile.json`: `{profile_command(prof)}`, "
            f"{provenance(prof)}): " + "; ".join(said) + "."
        )
    return "\n".join(lines).strip()


def render_bench(root: Path) -> str:
    """docs/performance.md: every part of the published bench run, targets first."""
    data = _results(root, "bench.json", "make bench")
    result = _with_targets(data)
    sections = bench.targets_section(result, commands=True)
    for label, run in result.get("stack", {}).items():
        sections += bench.stack_section(label, run)
    for part in (
        bench.job_section,
        bench.floor_ratio_section,
        bench.clients_section,
        bench.floor_section,
        bench.delivery_section,
        bench.clock_section,
        bench.addresses_section,
        bench.state_section,
        bench.models_section,
        bench.models_stack_section,
    ):
        sections += part(result)
    return "\n".join([_bench_line(data), "", *_demote(sections, "#### ")]).strip()


def render_profile(root: Path) -> str:
    """docs/performance.md: the published profile's stage tables, the job's and the runner's."""
    data = _results(root, "profile.json", "make profile")
    sections = profile.job_section(data) + profile.runner_section(data)
    line = f"From `docs/results/profile.json`: `{profile_command(data)}`, {provenance(data)}."
    return "\n".join([line, "", *_demote(sections, "#### ")]).strip()


def render_demo(root: Path) -> str:
    """docs/performance.md: a row per published demo run."""
    demos = _demo_runs(root)
    if not demos:
        return "No demo run is published yet: `make demo`, then `make publish`."
    lines = [
        "| run | answered | p50 / p90 / p99 ms | within the deadline | to the job p50 / p99 | "
        "in the job p50 / p99 | back p50 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in demos:
        r, lat = d["report"], d["report"]["latency_ms"]
        legs = [r["legs_ms"].get(leg) or {} for leg in loadgen.LEGS]
        lines.append(
            f"| `{demo_command(d)}` (`docs/results/demo-{d['args']['rate']:.0f}.json`, {provenance(d)}) | "
            f"{r['answered']:,} of {r['sent']:,} | "
            f"{bench._ms(lat['p50'])} / {bench._ms(lat['p90'])} / {bench._ms(lat['p99'])} | "
            f"{_within(d)[1]}, {d['deadline_ms']} ms | "
            + " | ".join(f"{bench._ms(g.get('p50'))} / {bench._ms(g.get('p99'))}" for g in legs)
            + " |"
        )
    return "\n".join(lines)


Renderer = Callable[[Path], str]
# Each document and the blocks it must hold, by name.
DOCUMENTS: dict[str, dict[str, Renderer]] = {
    "README.md": {"targets": render_targets},
    "docs/performance.md": {"bench": render_bench, "profile": render_profile, "demo": render_demo},
}


def blocks(text: str, doc: str) -> list[tuple[str, int, int]]:
    """(name, index of the begin line, index of the end line) of each marked block, in order."""
    lines = text.split("\n")
    out: list[tuple[str, int, int]] = []
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if lines[i] == END:
            raise PublishError(f"{doc}:{i + 1}: {END} without a block before it")
        if m:
            j = i + 1
            while j < len(lines) and lines[j] != END:
                if BEGIN.match(lines[j]):
                    break
                j += 1
            if j == len(lines) or lines[j] != END:
                raise PublishError(f"{doc}:{i + 1}: block '{m.group(1)}' has no end marker {END}")
            out.append((m.group(1), i, j))
            i = j
        i += 1
    return out


def render_document(text: str, doc: str, renderers: dict[str, Callable[[], str]]) -> str:
    """``text`` with each block's content replaced by its renderer's; every renderer's block must be
    there once, and no other block."""
    found = blocks(text, doc)
    names = [n for n, _, _ in found]
    for name in names:
        if name not in renderers:
            raise PublishError(f"{doc}: unknown block '{name}' (known: {', '.join(renderers)})")
        if names.count(name) > 1:
            raise PublishError(f"{doc}: block '{name}' appears {names.count(name)} times")
    for name in renderers:
        if name not in names:
            raise PublishError(f"{doc}: no block '{name}' (<!-- measured: {name} --> ... {END})")
    lines = text.split("\n")
    for name, begin, end in reversed(found):
        lines[begin + 1 : end] = _content(renderers[name]())
    return "\n".join(lines)


def _content(rendered: str) -> list[str]:
    """A block's lines between its markers: the rendered text, a blank line either side."""
    return ["", *rendered.split("\n"), ""]


def _renderers(root: Path, doc: str) -> dict[str, Callable[[], str]]:
    return {name: functools.partial(render, root) for name, render in DOCUMENTS[doc].items()}


def _read(root: Path, doc: str) -> str:
    path = root / doc
    if not path.is_file():
        raise PublishError(f"{doc}: no such file")
    return path.read_text()


def render_all(root: Path) -> list[str]:
    """Write every document's blocks; a line per document changed. Renders all before writing any."""
    new = {doc: render_document(_read(root, doc), doc, _renderers(root, doc)) for doc in DOCUMENTS}
    out = []
    for doc, text in new.items():
        if text != _read(root, doc):
            (root / doc).write_text(text)
            out.append(f"rendered {doc}")
    return out


def check(root: Path) -> str | None:
    """None where every block is what the committed JSON renders, else a line naming the first that
    is not."""
    for doc in DOCUMENTS:
        text = _read(root, doc)
        renderers = _renderers(root, doc)
        render_document(text, doc, renderers)  # the blocks are all there, each once
        lines = text.split("\n")
        for name, begin, end in blocks(text, doc):
            if lines[begin + 1 : end] != _content(renderers[name]()):
                return (
                    f"{doc}: block '{name}' (line {begin + 1}) differs from what {RESULTS}/*.json renders; "
                    "`make publish PUBLISH_ARGS=` renders it again"
                )
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rendezvous publish", description=__doc__.split("\n")[0])
    for src in SOURCES:
        ap.add_argument(
            f"--{src.option}",
            nargs="?",
            const="",
            type=str,
            metavar="PATH",
            help=f"copy this run (default {src.default}, from `{src.command}`) into {RESULTS}/",
        )
    ap.add_argument("--all", action="store_true", help="copy every run of the four whose file exists")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is out of date")
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    chosen = {s.option: (Path(v) if v else None) for s in SOURCES if (v := getattr(a, s.option)) is not None}
    try:
        if a.check:
            if chosen or a.all:
                ap.error("--check copies nothing: no source options with it")
            problem = check(a.root)
            if problem:
                print(f"publish --check: {problem}", file=sys.stderr)
                return 1
            print("publish --check: every measured block matches docs/results/")
            return 0
        for line in copy_runs(a.root, chosen, a.all) + render_all(a.root):
            print(line)
    except PublishError as e:
        print(f"publish: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
