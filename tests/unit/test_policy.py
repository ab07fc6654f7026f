"""udfs.policy: a validated policy file, and `decide`, checked against the rule as the design states it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from udfs.policy import (
    DECIDE_MODES,
    Decided,
    ModelSpec,
    Policy,
    PolicyError,
    ScoreView,
    Waiting,
    decide,
    load_policy,
    parse_policy,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "policies" / "default.yaml"
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def default_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT.read_text())


def with_changes(**over: Any) -> dict[str, Any]:
    d = default_data()
    d.update(over)
    return d


def with_model(i: int, **over: Any) -> dict[str, Any]:
    d = default_data()
    d["models"][i] = d["models"][i] | over
    return d


# --- parsing ---------------------------------------------------------------------------------------------


def test_default_policy_file() -> None:
    p = load_policy(DEFAULT)
    assert (p.version, p.deadline_ms, p.decide) == (1, 100, "first_in_order")
    assert p.models == (
        ModelSpec("gbt", "incumbent", 40),
        ModelSpec("logreg", "challenger", 70),
        ModelSpec("tree", "backstop", None),
        ModelSpec("base", "canary", None),
        ModelSpec("mlp", "shadow", None),
    )
    assert [m.id for m in p.official] == ["gbt", "logreg", "tree"]
    assert p.canary == ModelSpec("base", "canary")
    assert p.on_no_answer_output is None
    assert (p.late_window_ms, p.orphan_timeout_ms, p.dedupe_retention_ms) == (1000, 10_000, 600_000)
    assert (p.min_votes, p.threshold) == (1, 0.5)
    assert [p.role_of(x) for x in ("gbt", "base", "mlp", "nope")] == [
        "incumbent",
        "canary",
        "shadow",
        "unknown",
    ]
    hash(p)  # frozen: usable as a dict key / safe to share across calls


def test_defaults_when_only_required_fields() -> None:
    p = parse_policy({"version": 7, "deadline_ms": 5, "models": [{"id": "a", "role": "challenger"}]})
    assert (p.decide, p.canary, p.official, p.on_no_answer_output) == (
        "first_in_order",
        None,
        (ModelSpec("a", "challenger"),),
        None,
    )


def test_numbers_and_outputs_are_kept() -> None:
    p = parse_policy(
        with_changes(
            decide="weighted_average",
            min_votes=2,
            threshold=1,
            on_no_answer={"output": {"label": -1, "probability": 0.0}},
            late_window_ms=0,
            orphan_timeout_ms=1,
            dedupe_retention_ms=0,
            models=[
                {"id": "a", "role": "incumbent", "weight": 2},
                {"id": "b", "role": "backstop", "weight": 0.25},
            ],
        )
    )
    assert [m.weight for m in p.models] == [2.0, 0.25]
    assert isinstance(p.threshold, float) and p.threshold == 1.0
    assert p.on_no_answer_output == {"label": -1, "probability": 0.0}
    assert (p.min_votes, p.late_window_ms, p.orphan_timeout_ms, p.dedupe_retention_ms) == (2, 0, 1, 0)


ERRORS: list[tuple[str, Any, str]] = [
    ("not a mapping", ["version"], "policy:"),
    ("unknown top field", with_changes(deadline=5), "deadline:"),
    ("missing version", {k: v for k, v in default_data().items() if k != "version"}, "version:"),
    ("version zero", with_changes(version=0), "version:"),
    ("version string", with_changes(version="1"), "version:"),
    ("version bool", with_changes(version=True), "version:"),
    ("missing deadline", {k: v for k, v in default_data().items() if k != "deadline_ms"}, "deadline_ms:"),
    ("deadline too big", with_changes(deadline_ms=600_001), "deadline_ms:"),
    ("deadline zero", with_changes(deadline_ms=0), "deadline_ms:"),
    ("bad decide", with_changes(decide="fastest"), "decide:"),
    ("decide list", with_changes(decide=["first_in_order"]), "decide:"),
    ("no models", with_changes(models=[]), "models:"),
    ("models mapping", with_changes(models={"id": "a"}), "models:"),
    ("model not mapping", with_changes(models=["gbt"]), "models[0]:"),
    ("model unknown field", with_model(2, priority=1), "models[2].priority:"),
    ("model role", with_model(1, role="champion"), "models[1].role:"),
    ("model role missing", with_changes(models=[{"id": "a"}]), "models[0].role:"),
    ("model id missing", with_changes(models=[{"role": "incumbent"}]), "models[0].id:"),
    ("model id too long", with_model(0, id="m" * 65), "models[0].id:"),
    ("model id with space", with_model(3, id="base line"), "models[3].id:"),
    ("model id trailing newline", with_model(0, id="gbt\n"), "models[0].id:"),
    ("duplicate id", with_model(4, id="gbt"), "models[4].id:"),
    ("wait > deadline", with_model(1, wait_ms=101), "models[1].wait_ms:"),
    ("wait negative", with_model(0, wait_ms=-1), "models[0].wait_ms:"),
    ("wait float", with_model(0, wait_ms=4.5), "models[0].wait_ms:"),
    ("wait on canary", with_model(3, wait_ms=10), "models[3].wait_ms:"),
    ("wait on shadow", with_model(4, wait_ms=10), "models[4].wait_ms:"),
    ("weight zero", with_model(0, weight=0), "models[0].weight:"),
    ("weight infinite", with_model(0, weight=float("inf")), "models[0].weight:"),
    ("weight huge", with_model(0, weight=1e300), "models[0].weight:"),
    ("weight NaN", with_model(0, weight=float("nan")), "models[0].weight:"),
    ("weight string", with_model(0, weight="2"), "models[0].weight:"),
    (
        "no official model",
        with_changes(models=[{"id": "c", "role": "canary"}, {"id": "s", "role": "shadow"}]),
        "models:",
    ),
    ("two canaries", with_model(4, role="canary"), "models:"),
    ("two incumbents", with_model(1, role="incumbent"), "models:"),
    ("on_no_answer not mapping", with_changes(on_no_answer=None), "on_no_answer:"),
    ("on_no_answer extra key", with_changes(on_no_answer={"output": None, "reason": "x"}), "on_no_answer:"),
    (
        "on_no_answer NaN",
        with_changes(on_no_answer={"output": {"value": float("nan")}}),
        "on_no_answer.output:",
    ),
    ("on_no_answer not an output", with_changes(on_no_answer={"output": "unknown"}), "on_no_answer.output:"),
    ("on_no_answer bad field", with_changes(on_no_answer={"output": {"score": 1}}), "on_no_answer.output:"),
    ("min_votes > official", with_changes(min_votes=4), "min_votes:"),
    ("min_votes zero", with_changes(min_votes=0), "min_votes:"),
    ("threshold > 1", with_changes(threshold=1.5), "threshold:"),
    ("threshold negative", with_changes(threshold=-0.1), "threshold:"),
    ("threshold NaN", with_changes(threshold=float("nan")), "threshold:"),
    ("threshold bool", with_changes(threshold=True), "threshold:"),
    ("late window negative", with_changes(late_window_ms=-1), "late_window_ms:"),
    ("orphan timeout zero", with_changes(orphan_timeout_ms=0), "orphan_timeout_ms:"),
    ("retention too long", with_changes(dedupe_retention_ms=7 * 86_400_000 + 1), "dedupe_retention_ms:"),
    ("bandit without thompson", with_changes(bandit={"discount": 0.99}), "bandit:"),
    ("bandit not a mapping", with_changes(decide="thompson", bandit=[1, 1]), "bandit:"),
    ("bandit unknown field", with_changes(decide="thompson", bandit={"alpha": 1}), "bandit.alpha:"),
    ("bandit prior one number", with_changes(decide="thompson", bandit={"prior": [1]}), "bandit.prior:"),
    ("bandit prior zero", with_changes(decide="thompson", bandit={"prior": [0, 1]}), "bandit.prior[0]:"),
    (
        "bandit prior NaN",
        with_changes(decide="thompson", bandit={"prior": [1, float("nan")]}),
        "bandit.prior[1]:",
    ),
    ("bandit prior bool", with_changes(decide="thompson", bandit={"prior": [True, 1]}), "bandit.prior[0]:"),
    ("bandit discount 0", with_changes(decide="thompson", bandit={"discount": 0}), "bandit.discount:"),
    ("bandit discount > 1", with_changes(decide="thompson", bandit={"discount": 1.01}), "bandit.discount:"),
]


@pytest.mark.parametrize(("data", "prefix"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_validation_error_names_the_field(data: Any, prefix: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(data)
    assert str(e.value).startswith(prefix), str(e.value)


def test_the_default_data_itself_is_valid() -> None:
    # The error table above mutates this; make sure each row fails for its own reason.
    assert parse_policy(default_data()) == load_policy(DEFAULT)


def test_load_policy_errors_name_file_and_field(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=r"cannot read policy file") as e:
        load_policy(missing)
    assert str(e.value).startswith(f"{missing}: ")

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("version: 1\nmodels: [ {id: a\n")
    with pytest.raises(PolicyError, match=r"not valid YAML") as e:
        load_policy(bad_yaml)
    assert str(e.value).startswith(f"{bad_yaml}: ")

    bad_field = tmp_path / "role.yaml"
    bad_field.write_text(DEFAULT.read_text().replace("role: challenger", "role: champion"))
    with pytest.raises(PolicyError) as e:
        load_policy(bad_field)
    assert str(e.value).startswith(f"{bad_field}: models[1].role: ")

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(PolicyError) as e:
        load_policy(empty)
    assert str(e.value).startswith(f"{empty}: policy: ")


# --- generated policies ------------------------------------------------------------------------------------


@st.composite
def policy_data(
    draw: st.DrawFn, modes: tuple[str, ...] = DECIDE_MODES, max_deadline: int = 200
) -> dict[str, Any]:
    deadline = draw(st.integers(1, max_deadline))
    n_official = draw(st.integers(1, 4))
    roles = [draw(st.sampled_from(["challenger", "backstop"])) for _ in range(n_official)]
    if draw(st.booleans()):
        roles[draw(st.integers(0, n_official - 1))] = "incumbent"
    if draw(st.booleans()):
        roles.append("canary")
    roles += ["shadow"] * draw(st.integers(0, 2))
    roles = draw(st.permutations(roles))
    models: list[dict[str, Any]] = []
    for i, role in enumerate(roles):
        m: dict[str, Any] = {"id": f"m{i}", "role": role}
        if role in ("incumbent", "challenger", "backstop"):
            wait = draw(st.none() | st.integers(0, deadline))
            if wait is not None:
                m["wait_ms"] = wait
            weight = draw(st.sampled_from([1.0, 1, 0.5, 2.0, 3.0, 1e6]))
            if weight != 1.0:
                m["weight"] = weight
        models.append(m)
    d: dict[str, Any] = {
        "version": draw(st.integers(1, 2**31 - 1)),
        "deadline_ms": deadline,
        "decide": draw(st.sampled_from(modes)),
        "models": models,
    }
    optional = {
        "on_no_answer": st.sampled_from(
            [{"output": None}, {"output": {"label": -1}}, {"output": {"value": 0.5}}]
        ),
        "late_window_ms": st.integers(0, 300),
        "orphan_timeout_ms": st.integers(1, 3_600_000),
        "dedupe_retention_ms": st.integers(0, 7 * 86_400_000),
        "min_votes": st.integers(1, n_official),
        "threshold": st.floats(0, 1),
    }
    for k, strat in optional.items():
        if draw(st.booleans()):
            d[k] = draw(strat)
    return d


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_data())
def test_to_dict_round_trips(d: dict[str, Any]) -> None:
    p = parse_policy(d)
    again = parse_policy(p.to_dict())
    assert again == p
    assert again.to_dict() == p.to_dict()
    # Through YAML text too, as an operator would write it back.
    assert parse_policy(yaml.safe_load(yaml.safe_dump(p.to_dict()))) == p
    assert [m.id for m in p.official] == [
        m["id"] for m in d["models"] if m["role"] != "canary" and m["role"] != "shadow"
    ]


def test_thompson_policy_defaults_arms_and_round_trip() -> None:
    p = parse_policy(with_changes(decide="thompson"))
    assert p.bandit is not None and (p.bandit.prior, p.bandit.discount) == ((1.0, 1.0), 1.0)
    assert p.bandit_arms == ("gbt", "logreg")  # the backstop is the last resort, not a contender
    q = parse_policy(with_changes(decide="thompson", bandit={"prior": [2, 8], "discount": 0.999}))
    assert q.bandit is not None and (q.bandit.prior, q.bandit.discount) == ((2.0, 8.0), 0.999)
    assert parse_policy(q.to_dict()) == q and parse_policy(yaml.safe_load(yaml.safe_dump(q.to_dict()))) == q
    assert "bandit" not in P.to_dict()
    only_backstops = parse_policy(
        {"version": 1, "deadline_ms": 100, "decide": "thompson", "models": [{"id": "a", "role": "backstop"}]}
    )
    assert only_backstops.bandit_arms == ("a",)


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    p = load_policy(DEFAULT)
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p.to_dict()))
    assert load_policy(f) == p


# --- decide: first_in_order, by hand ------------------------------------------------------------------------

R = 1_000  # received_at_ms
DL = R + 100  # deadline_at_ms of the default policy
P = load_policy(DEFAULT)


def ok(label: Any = 1, version: str = "v1", **more: Any) -> ScoreView:
    return ScoreView(True, {"label": label, **more}, version)


ERR = ScoreView(False, None, "v1")


def at(
    now: int,
    scores: Mapping[str, ScoreView],
    by_timer: bool = False,
    policy: Policy = P,
    deadline_at: int = DL,
) -> Decided | Waiting:
    return decide(policy, scores, R, deadline_at, now, by_timer)


def test_nothing_yet_waits_for_the_incumbent() -> None:
    assert at(R, {}) == Waiting(R + 40)


def test_incumbent_first_is_preferred_immediately() -> None:
    assert at(R + 3, {"gbt": ok("a", "g7")}) == Decided("gbt", "g7", {"label": "a"}, "preferred", "score")


def test_incumbent_wins_even_when_others_answered_first() -> None:
    scores = {"logreg": ok("b"), "tree": ok("c"), "gbt": ok("a")}
    assert at(R + 30, scores) == Decided("gbt", "v1", {"label": "a"}, "preferred", "score")


def test_challenger_waits_for_the_incumbent_wait() -> None:
    assert at(R + 10, {"logreg": ok("b")}) == Waiting(R + 40)
    assert at(R + 39, {"logreg": ok("b")}, by_timer=True) == Waiting(R + 40)
    assert at(R + 40, {"logreg": ok("b")}, by_timer=True) == Decided(
        "logreg", "v1", {"label": "b"}, "fallback", "wait_timer"
    )


def test_after_incumbent_wait_a_challenger_score_decides_at_once() -> None:
    assert at(R + 50, {"logreg": ok("b")}) == Decided("logreg", "v1", {"label": "b"}, "fallback", "score")


def test_backstop_after_both_waits() -> None:
    scores = {"tree": ok("c")}
    assert at(R + 45, scores, by_timer=True) == Waiting(R + 70)
    assert at(R + 70, scores, by_timer=True) == Decided(
        "tree", "v1", {"label": "c"}, "backstop", "wait_timer"
    )


def test_failed_models_are_skipped_without_waiting() -> None:
    assert at(R + 5, {"gbt": ERR, "logreg": ok("b")}) == Decided(
        "logreg", "v1", {"label": "b"}, "fallback", "score"
    )
    assert at(R + 5, {"gbt": ERR, "logreg": ERR, "tree": ok("c")}).reason == "backstop"  # type: ignore[union-attr]
    assert at(R + 5, {"gbt": ERR}) == Waiting(R + 70)
    assert at(R + 5, {"gbt": ERR, "logreg": ERR}) == Waiting(DL)


def test_all_failed_is_no_answer_at_once() -> None:
    assert at(R + 5, {"gbt": ERR, "logreg": ERR, "tree": ERR}) == Decided(
        None, None, None, "no_answer", "all_failed"
    )
    # Non-official answers do not help.
    scores = {"gbt": ERR, "logreg": ERR, "tree": ERR, "base": ok(), "mlp": ok()}
    assert at(R + 5, scores) == Decided(None, None, None, "no_answer", "all_failed")


def test_nothing_by_the_deadline_is_no_answer() -> None:
    only_side = {"base": ok(), "mlp": ok(), "ghost": ok()}
    assert at(R + 70, only_side, by_timer=True) == Waiting(DL)
    assert at(DL - 1, only_side, by_timer=True) == Waiting(DL)
    assert at(DL, only_side, by_timer=True) == Decided(None, None, None, "no_answer", "deadline")
    assert at(DL, {"gbt": ERR}, by_timer=True) == Decided(None, None, None, "no_answer", "deadline")


def test_on_no_answer_output_is_used() -> None:
    p = parse_policy(with_changes(on_no_answer={"output": {"label": "unknown"}}))
    assert at(DL, {}, by_timer=True, policy=p) == Decided(
        None, None, {"label": "unknown"}, "no_answer", "deadline"
    )


def test_a_late_better_answer_before_the_deadline_still_wins() -> None:
    # The incumbent is past its wait, the challenger still within its own: the incumbent answers now.
    assert at(R + 50, {"tree": ok("c")}, by_timer=True) == Waiting(R + 70)
    assert at(R + 60, {"tree": ok("c"), "gbt": ok("a")}) == Decided(
        "gbt", "v1", {"label": "a"}, "preferred", "score"
    )
    # All waits are over and nobody official answered: whoever answers first before the deadline wins.
    assert at(R + 80, {}, by_timer=True) == Waiting(DL)
    assert at(R + 90, {"logreg": ok("b")}) == Decided("logreg", "v1", {"label": "b"}, "fallback", "score")
    assert at(R + 95, {"gbt": ok("a")}) == Decided("gbt", "v1", {"label": "a"}, "preferred", "score")


def test_an_answer_at_the_deadline_is_triggered_by_it() -> None:
    assert at(DL, {"logreg": ok("b")}) == Decided("logreg", "v1", {"label": "b"}, "fallback", "deadline")


def test_request_deadline_shorter_than_waits() -> None:
    short = R + 20  # the request's own deadline_ms = 20 < the incumbent's 40
    assert at(R, {}, deadline_at=short) == Waiting(short)
    assert at(R + 10, {"logreg": ok("b")}, deadline_at=short) == Waiting(short)
    assert at(short, {"logreg": ok("b")}, by_timer=True, deadline_at=short) == Decided(
        "logreg", "v1", {"label": "b"}, "fallback", "deadline"
    )
    assert at(short, {}, by_timer=True, deadline_at=short) == Decided(
        None, None, None, "no_answer", "deadline"
    )


def test_request_deadline_longer_than_policy() -> None:
    long = R + 1000
    assert at(R + 70, {}, by_timer=True, deadline_at=long) == Waiting(
        long
    )  # the backstop waits to the deadline


def test_zero_wait_never_waits() -> None:
    p = parse_policy(
        {
            "version": 1,
            "deadline_ms": 50,
            "models": [
                {"id": "a", "role": "incumbent", "wait_ms": 0},
                {"id": "b", "role": "challenger", "wait_ms": 0},
            ],
        }
    )
    assert decide(p, {}, R, R + 50, R, False) == Waiting(R + 50)
    assert decide(p, {"b": ok()}, R, R + 50, R, False) == Decided(
        "b", "v1", {"label": 1}, "fallback", "score"
    )


def test_reason_follows_the_order_not_the_role_name() -> None:
    p = parse_policy(
        {
            "version": 1,
            "deadline_ms": 50,
            "models": [{"id": "t", "role": "backstop", "wait_ms": 10}, {"id": "c", "role": "challenger"}],
        }
    )
    assert decide(p, {"t": ok()}, R, R + 50, R + 1, False).reason == "backstop"  # type: ignore[union-attr]
    assert decide(p, {"c": ok()}, R, R + 50, R + 10, True) == Decided(
        "c", "v1", {"label": 1}, "fallback", "wait_timer"
    )
    p2 = parse_policy(
        {
            "version": 1,
            "deadline_ms": 50,
            "models": [{"id": "c", "role": "challenger"}, {"id": "i", "role": "incumbent"}],
        }
    )
    assert decide(p2, {"c": ok()}, R, R + 50, R + 1, False).reason == "preferred"  # type: ignore[union-attr]


# --- decide: ensembles, by hand -------------------------------------------------------------------------------


def ens(mode: str, n: int = 3, waits: list[int | None] | None = None, **more: Any) -> Policy:
    waits = waits or [None] * n
    models = []
    for i in range(n):
        m: dict[str, Any] = {"id": f"m{i}", "role": "challenger"}
        if waits[i] is not None:
            m["wait_ms"] = waits[i]
        models.append(m)
    return parse_policy({"version": 4, "deadline_ms": 100, "decide": mode, "models": models, **more})


def test_majority_vote_counts_labels() -> None:
    p = ens("majority_vote")
    scores = {"m0": ok("a", probability=0.8), "m1": ok("b", probability=0.3), "m2": ok("a", probability=0.6)}
    d = decide(p, scores, R, DL, R + 5, False)
    assert isinstance(d, Decided)
    assert (d.model_id, d.model_version, d.reason, d.trigger) == ("ensemble", "4", "ensemble", "score")
    assert d.output["label"] == "a" and d.output["probability"] == pytest.approx(0.7)


def test_majority_vote_waits_for_every_model_up_to_its_wait() -> None:
    p = ens("majority_vote", waits=[10, 30, None])
    one = {"m1": ok("a")}  # m1 has answered, so only m0 (10 ms) and m2 (to the deadline) are waited for
    assert decide(p, one, R, DL, R + 5, False) == Waiting(R + 10)
    assert decide(p, one, R, DL, R + 10, True) == Waiting(DL)
    assert decide(p, one | {"m2": ok("b")}, R, DL, R + 20, False) == Decided(
        "ensemble",
        "4",
        {"label": "a"},
        "ensemble",
        "score",  # tie a/b: m1 is preferred to m2
    )
    assert decide(p, one, R, DL, DL, True) == Decided("ensemble", "4", {"label": "a"}, "ensemble", "deadline")


def test_majority_vote_tie_goes_to_the_most_preferred() -> None:
    p = ens("majority_vote", n=2)
    assert decide(p, {"m0": ok("x"), "m1": ok("y")}, R, DL, R, False).output == {"label": "x"}  # type: ignore
    assert decide(p, {"m0": ok("y"), "m1": ok("x")}, R, DL, R, False).output == {"label": "y"}  # type: ignore
    p4 = ens("majority_vote", n=4)
    scores = {"m0": ok("b"), "m1": ok("a"), "m2": ok("a"), "m3": ok("b")}
    assert decide(p4, scores, R, DL, R, False).output == {"label": "b"}  # type: ignore[union-attr]


def test_majority_vote_labels_are_json_values() -> None:
    p = ens("majority_vote", n=4)
    # 1, "1" and true are three labels (true wins 2-1-1), not one (Python: 1 == True, str(1) == "1").
    scores = {"m0": ok(1), "m1": ok("1"), "m2": ok(True), "m3": ok(True)}
    out = decide(p, scores, R, DL, R, False).output  # type: ignore[union-attr]
    assert json.dumps(out) == '{"label": true}'  # compared as JSON: in Python {"label": 1} == {"label": True}


def test_majority_vote_ignores_failures_and_outputs_without_label() -> None:
    p = ens("majority_vote")
    scores = {"m0": ERR, "m1": ScoreView(True, {"probability": 0.9}, "v"), "m2": ok("z")}
    assert decide(p, scores, R, DL, R, False).output == {"label": "z"}  # type: ignore[union-attr]
    all_bad = {"m0": ERR, "m1": ScoreView(True, {"value": 3}, "v"), "m2": ERR}
    assert decide(p, all_bad, R, DL, R, False) == Decided(None, None, None, "no_answer", "all_failed")


def test_min_votes() -> None:
    p = ens("majority_vote", waits=[30, 30, 30], min_votes=2)
    one = {"m0": ok("a"), "m1": ERR}
    assert decide(p, one, R, DL, R + 30, True) == Waiting(DL)
    assert decide(p, one, R, DL, DL, True) == Decided(None, None, None, "no_answer", "deadline")
    assert decide(p, one | {"m2": ok("b")}, R, DL, R + 50, False) == Decided(
        "ensemble", "4", {"label": "a"}, "ensemble", "score"
    )
    assert decide(p, one | {"m2": ERR}, R, DL, R + 5, False) == Decided(
        None, None, None, "no_answer", "all_failed"
    )


def test_weighted_average_of_probabilities_with_threshold() -> None:
    models = [{"id": "a", "role": "incumbent", "weight": 1}, {"id": "b", "role": "challenger", "weight": 3}]
    base = {"version": 2, "deadline_ms": 100, "decide": "weighted_average", "models": models}
    scores = {
        "a": ScoreView(True, {"probability": 0.25}, "v"),
        "b": ScoreView(True, {"probability": 0.75}, "v"),
    }
    d = decide(parse_policy(base), scores, R, DL, R, False)
    assert d == Decided("ensemble", "2", {"label": 1, "probability": 0.625}, "ensemble", "score")
    assert decide(parse_policy(base | {"threshold": 0.625}), scores, R, DL, R, False).output["label"] == 1  # type: ignore
    assert decide(parse_policy(base | {"threshold": 0.7}), scores, R, DL, R, False).output["label"] == 0  # type: ignore


def test_weighted_average_prefers_probability_over_value() -> None:
    p = ens("weighted_average", n=2)
    scores = {"m0": ScoreView(True, {"probability": 0.9}, "v"), "m1": ScoreView(True, {"value": 100.0}, "v")}
    assert decide(p, scores, R, DL, R, False).output == {"label": 1, "probability": 0.9}  # type: ignore


def test_weighted_average_of_values() -> None:
    models = [
        {"id": "a", "role": "challenger", "weight": 0.5},
        {"id": "b", "role": "challenger", "weight": 1.5},
    ]
    p = parse_policy({"version": 2, "deadline_ms": 100, "decide": "weighted_average", "models": models})
    scores = {"a": ScoreView(True, {"value": 10}, "v"), "b": ScoreView(True, {"value": -2, "label": 5}, "v")}
    out = decide(p, scores, R, DL, R, False).output  # type: ignore[union-attr]
    assert out == {"value": pytest.approx(1.0)} and set(out) == {"value"}


def test_weighted_average_ignores_label_only_outputs() -> None:
    p = ens("weighted_average", n=2, waits=[0, 0])
    scores = {"m0": ok("a"), "m1": ScoreView(True, {"value": 4}, "v")}
    assert decide(p, scores, R, DL, R, False).output == {"value": 4.0}  # type: ignore[union-attr]
    assert decide(p, {"m0": ok("a")}, R, DL, R, False) == Waiting(DL)


# --- decide: properties against the rule as stated in the design -----------------------------------------------


@dataclass(frozen=True)
class Arrival:
    t: int
    model_id: str
    view: ScoreView


def _until(m: ModelSpec, received: int, deadline_at: int) -> int:
    return deadline_at if m.wait_ms is None else min(received + m.wait_ms, deadline_at)


def rule(policy: Policy, present: Mapping[str, ScoreView], received: int, deadline_at: int, t: int) -> Any:
    """What the design says the answer is at time t, or None if it is not certain yet.

    first_in_order: "the most preferred model that has answered, once every model ahead of it has
    answered, failed, or passed its wait_ms"; at the deadline the best answer present wins; with none,
    no_answer. Ensembles: every official answer that came in time, each model waited for up to its wait.
    Returns (model_id, output, reason, no_answer_trigger).
    """
    official = policy.official

    def failed(m: ModelSpec) -> bool:
        return m.id in present and not present[m.id].ok

    def silent_past_wait(m: ModelSpec) -> bool:
        return m.id not in present and t >= _until(m, received, deadline_at)

    all_failed = all(failed(m) for m in official)
    if policy.decide == "first_in_order":
        candidates = [
            k
            for k, m in enumerate(official)
            if m.id in present
            and present[m.id].ok
            and all(failed(a) or silent_past_wait(a) for a in official[:k])
        ]
        if candidates:
            k = candidates[0]
            m = official[k]
            reason = "backstop" if m.role == "backstop" else ("preferred" if k == 0 else "fallback")
            return (m.id, present[m.id].output, reason, None)
        if all_failed:
            return (None, policy.on_no_answer_output, "no_answer", "all_failed")
        if t >= deadline_at:
            assert not any(m.id in present and present[m.id].ok for m in official)
            return (None, policy.on_no_answer_output, "no_answer", "deadline")
        return None
    if not all(m.id in present or silent_past_wait(m) for m in official):
        return None

    def counts(out: Any) -> bool:  # majority_vote needs a label; weighted_average a probability or value
        if policy.decide == "majority_vote":
            return out.get("label") is not None
        return out.get("probability") is not None or out.get("value") is not None

    usable = [
        (m, present[m.id].output)
        for m in official
        if m.id in present and present[m.id].ok and counts(present[m.id].output)
    ]
    if len(usable) >= policy.min_votes:
        return ("ensemble", expected_ensemble_output(policy, usable), "ensemble", None)
    if all(m.id in present for m in official):
        return (None, policy.on_no_answer_output, "no_answer", "all_failed")
    if t >= deadline_at:
        return (None, policy.on_no_answer_output, "no_answer", "deadline")
    return None


def expected_ensemble_output(policy: Policy, usable: list[tuple[ModelSpec, Any]]) -> dict[str, Any]:
    if policy.decide == "majority_vote":
        tally: dict[str, list[Any]] = {}  # label as JSON -> outputs voting for it, in preference order
        for _, out in usable:
            tally.setdefault(json.dumps(out["label"]), []).append(out)
        order = list(tally)  # first appearance = most preferred voter
        best = max(order, key=lambda k: (len(tally[k]), -order.index(k)))
        res: dict[str, Any] = {"label": tally[best][0]["label"]}
        ps = [o["probability"] for o in tally[best] if o.get("probability") is not None]
        if ps:
            res["probability"] = sum(ps) / len(ps)
        return res
    with_p = [(m.weight, out["probability"]) for m, out in usable if out.get("probability") is not None]
    if with_p:
        p = sum(w * x for w, x in with_p) / sum(w for w, _ in with_p)
        return {"label": int(p >= policy.threshold), "probability": p}
    return {"value": sum(m.weight * out["value"] for m, out in usable) / sum(m.weight for m, _ in usable)}


def same_output(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
        return all(
            a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12)
            if isinstance(a[k], float)
            else json.dumps(a[k]) == json.dumps(b[k])
            for k in a
        )
    return json.dumps(a) == json.dumps(b)


score_outputs = st.sets(st.sampled_from(["label", "probability", "value"]), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries(
        {
            k: {
                "label": st.sampled_from(["a", "b", 1, True]),
                "probability": st.floats(0, 1),
                "value": st.floats(-1e6, 1e6),
            }[k]
            for k in sorted(keys)
        }
    )
)


@st.composite
def scenarios(
    draw: st.DrawFn, modes: tuple[str, ...] = DECIDE_MODES
) -> tuple[Policy, int, int, list[Arrival]]:
    policy = parse_policy(draw(policy_data(modes=modes, max_deadline=120)))
    received = draw(st.integers(0, 50))
    deadline_at = received + draw(
        st.sampled_from([policy.deadline_ms, policy.deadline_ms, draw(st.integers(1, 200))])
    )
    ids = [m.id for m in policy.models] + ["ghost"]
    # Which models answer at all: official ones listed twice come earlier, so answer more often.
    shuffled = list(dict.fromkeys(draw(st.permutations(ids + [m.id for m in policy.official]))))
    chosen = shuffled[: draw(st.integers(1, len(ids)))]
    # Mostly before the deadline, some exactly when a wait or the deadline runs out, some after.
    edges = {received + m.wait_ms for m in policy.official if m.wait_ms is not None} | {received, deadline_at}
    times = (
        st.integers(received, deadline_at)
        | st.sampled_from(sorted(edges))
        | st.integers(received, deadline_at + 30)
    )
    arrivals = []
    for mid in chosen:
        good = draw(st.booleans() | st.just(True))
        view = (
            ScoreView(True, draw(score_outputs), f"v-{mid}") if good else ScoreView(False, None, f"v-{mid}")
        )
        arrivals.append(Arrival(draw(times), mid, view))
    arrivals.sort(key=lambda a: a.t)
    return policy, received, deadline_at, arrivals


def run_decide(
    policy: Policy, received: int, deadline_at: int, arrivals: list[Arrival]
) -> tuple[int, str, Decided]:
    """Drive decide like the mailbox does: at the request, at every arrival and at every wake time."""
    present: dict[str, ScoreView] = {}
    pending = list(arrivals)
    first = [a for a in pending if a.t == received]
    for a in first:
        present[a.model_id] = a.view
    pending = pending[len(first) :]
    now, kind = received, "event"
    verdict = decide(policy, present, received, deadline_at, now, False)
    for _ in range(1000):
        if isinstance(verdict, Decided):
            return now, kind, verdict
        assert isinstance(verdict, Waiting)
        assert now < verdict.wake_at_ms <= deadline_at, (now, verdict)
        if pending and pending[0].t <= verdict.wake_at_ms:  # arrivals before a timer at the same ms
            a = pending.pop(0)
            present[a.model_id] = a.view
            now, kind = a.t, "event"
            verdict = decide(policy, present, received, deadline_at, now, False)
        else:
            now, kind = verdict.wake_at_ms, "timer"
            verdict = decide(policy, present, received, deadline_at, now, True)
    raise AssertionError("no decision")


def expected_first_decision(policy: Policy, received: int, deadline_at: int, arrivals: list[Arrival]) -> Any:
    """Brute force: the first moment (any ms, after each arrival) at which the rule gives an answer."""
    present: dict[str, ScoreView] = {}
    pending = list(arrivals)
    for t in range(received, deadline_at + 1):
        if t == received:  # arrivals at this ms came before the request: all present at its evaluation
            while pending and pending[0].t == t:
                a = pending.pop(0)
                present[a.model_id] = a.view
            got = rule(policy, present, received, deadline_at, t)
            if got is not None:
                return t, "event", got
        while pending and pending[0].t == t:  # each arrival is an evaluation point
            a = pending.pop(0)
            present[a.model_id] = a.view
            got = rule(policy, present, received, deadline_at, t)
            if got is not None:
                return t, "event", got
        got = rule(policy, present, received, deadline_at, t)  # a timer could fire at any ms
        if got is not None:
            return t, "timer", got
    raise AssertionError("the rule gave no answer by the deadline")


def check_against_rule(scenario: tuple[Policy, int, int, list[Arrival]]) -> None:
    policy, received, deadline_at, arrivals = scenario
    t, kind, d = run_decide(policy, received, deadline_at, arrivals)
    et, ekind, (model_id, output, reason, no_answer_trigger) = expected_first_decision(
        policy, received, deadline_at, arrivals
    )
    assert t <= deadline_at
    assert t == et, (t, et, d)  # not earlier, not later than the rule allows
    assert (d.model_id, d.reason) == (model_id, reason), d
    assert same_output(d.output, output), (d.output, output)
    if model_id not in (None, "ensemble"):
        assert d.model_version == f"v-{model_id}"
    if no_answer_trigger == "all_failed":
        assert d.trigger == "all_failed"
    elif t >= deadline_at:
        assert d.trigger == "deadline"
    else:
        assert d.trigger == ("score" if ekind == "event" else "wait_timer"), (d, ekind)
    assert kind == ekind


@PROPS
@given(scenarios(modes=("first_in_order",)))
def test_first_in_order_follows_the_rule(scenario: tuple[Policy, int, int, list[Arrival]]) -> None:
    check_against_rule(scenario)


@PROPS
@given(scenarios(modes=("majority_vote", "weighted_average")))
def test_ensembles_follow_the_rule(scenario: tuple[Policy, int, int, list[Arrival]]) -> None:
    check_against_rule(scenario)


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.data())
def test_decide_is_a_pure_function(
    scenario: tuple[Policy, int, int, list[Arrival]], data: st.DataObject
) -> None:
    policy, received, deadline_at, arrivals = scenario
    present = {a.model_id: a.view for a in arrivals}
    now = data.draw(st.integers(received, deadline_at + 10))
    first = decide(policy, present, received, deadline_at, now, False)
    again = decide(policy, dict(reversed(list(present.items()))), received, deadline_at, now, False)
    assert first == again  # neither the mapping's order nor repeated calls change the answer
    if isinstance(first, Waiting):
        assert now < first.wake_at_ms <= deadline_at
    if now >= deadline_at:
        assert isinstance(first, Decided)


# --- decide: thompson (the bandit's choice goes first, then the preference order) ---------------------------

T = parse_policy(with_changes(decide="thompson"))


def test_thompson_waits_for_the_chosen_model_and_takes_its_answer() -> None:
    # logreg chosen: gbt's answer (first in preference order) does not settle it.
    assert decide(T, {"gbt": ok(1)}, R, DL, R + 5, False, "logreg") == Waiting(R + 70)
    d = decide(T, {"gbt": ok(1), "logreg": ok(0)}, R, DL, R + 6, False, "logreg")
    assert isinstance(d, Decided) and (d.model_id, d.reason, d.trigger) == ("logreg", "preferred", "score")


def test_thompson_falls_back_to_the_preference_order_when_the_chosen_model_is_silent_or_fails() -> None:
    # logreg chosen and silent until its wait (70 ms): then gbt, first in preference order.
    d = decide(T, {"gbt": ok(1)}, R, DL, R + 70, True, "logreg")
    assert isinstance(d, Decided) and (d.model_id, d.reason, d.trigger) == ("gbt", "fallback", "wait_timer")
    d = decide(T, {"logreg": ERR, "tree": ok(0)}, R, DL, R + 10, False, "logreg")
    assert decide(T, {"logreg": ERR}, R, DL, R + 10, False, "logreg") == Waiting(R + 40)  # gbt's wait
    d = decide(T, {"logreg": ERR, "tree": ok(0)}, R, DL, R + 40, True, "logreg")
    assert isinstance(d, Decided) and (d.model_id, d.reason) == ("tree", "backstop")


def test_thompson_without_a_choice_is_first_in_order() -> None:
    for scores, now in (({"gbt": ok(1)}, R + 1), ({"logreg": ok(1)}, R + 40), ({}, DL)):
        assert decide(T, scores, R, DL, now, False, None) == decide(P, scores, R, DL, now, False)
        assert decide(T, scores, R, DL, now, False, "ghost") == decide(P, scores, R, DL, now, False)
