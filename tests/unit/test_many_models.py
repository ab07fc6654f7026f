"""Many models (issue 14): the 20-model policy file, the policy's model limit, and a mailbox that stays
bounded by the policy's models whatever arrives, driven through the job's logic (``udfs.testing``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ops.policy_cli import document
from udfs import names
from udfs.mailbox import MAX_BUFFERED_TICKS, MAX_EXTRA_SCORES, TOMBSTONE_PREFIX, UNKNOWN_ROLE, Mailbox
from udfs.policy import MAX_MODELS, PolicyError, load_policy, parse_policy
from udfs.policy_registry import MAX_DOCUMENT_BYTES, Accepted, PolicyRegistry
from udfs.testing import Harness

ROOT = Path(__file__).resolve().parents[2]
MANY = load_policy(ROOT / "policies" / "many-models.yaml")
OUTPUT = {"label": 1, "probability": 0.8}


def test_the_many_models_policy_lists_twenty_models_in_every_role() -> None:
    roles = [m.role for m in MANY.models]
    assert len(MANY.models) == 20 and len({m.id for m in MANY.models}) == 20
    assert {r: roles.count(r) for r in set(roles)} == {
        "incumbent": 1,
        "challenger": 5,
        "backstop": 1,
        "canary": 1,
        "shadow": 12,
    }
    assert [m.id for m in MANY.official][:2] == ["gbt", "logreg"] and MANY.official[-1].role == "backstop"
    # Waits grow along the order, so each challenger gets its turn before the deadline.
    waits = [m.wait_ms for m in MANY.official if m.wait_ms is not None]
    assert waits == sorted(waits) and waits[-1] < MANY.deadline_ms


def _models(n: int) -> list[dict[str, Any]]:
    return [{"id": "m0", "role": "incumbent"}] + [{"id": f"m{i}", "role": "shadow"} for i in range(1, n)]


def test_a_policy_has_at_most_max_models_and_the_schema_says_the_same() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads((ROOT / "schemas" / "policy.schema.json").read_text())
    assert schema["properties"]["models"]["maxItems"] == MAX_MODELS
    validator = Draft202012Validator(schema)
    at_limit = {"version": 1, "deadline_ms": 100, "models": _models(MAX_MODELS)}
    assert len(parse_policy(at_limit).models) == MAX_MODELS
    assert validator.is_valid(at_limit)
    over = at_limit | {"models": _models(MAX_MODELS + 1)}
    with pytest.raises(PolicyError, match=rf"^models: at most {MAX_MODELS} models, got {MAX_MODELS + 1}$"):
        parse_policy(over)
    assert not validator.is_valid(over)


def test_the_largest_policy_a_file_may_hold_can_be_published_live() -> None:
    """Every field of every model at its longest: the document still fits the policies topic's limit, so
    a policy the job may start with can also be sent to it running (``rendezvous policy publish``)."""
    longest = [
        {
            "id": f"{i:03}".ljust(64, "m"),
            "role": "challenger",
            "wait_ms": 600_000,
            "weight": 123456.78901234567,
        }
        for i in range(MAX_MODELS)
    ]
    big = parse_policy({"version": 2, "deadline_ms": 600_000, "models": longest})
    doc = document(big)
    assert (
        len(big.models) == MAX_MODELS and 10_000 < len(doc) <= MAX_DOCUMENT_BYTES // 4
    )  # ~140 bytes a model: room to spare
    assert isinstance(PolicyRegistry(MANY).offer(doc), Accepted)


def test_twenty_models_each_score_and_the_decision_log_keeps_them_all() -> None:
    h = Harness(MANY)
    h.send_request("r1")
    # The incumbent and the first two challengers fail: the next challenger answers, at once.
    first = ["gbt", "logreg", "challenger-1"]
    for m in first:
        h.send_score("r1", m, None, status="error", error="down")
    assert h.results == []
    h.advance_to(5)
    h.send_score("r1", "challenger-2", OUTPUT)
    (result,) = h.results
    assert (result["model_id"], result["reason"], result["trigger"]) == ("challenger-2", "fallback", "score")
    assert result["failed"] == first and result["answered"] == ["challenger-2"]
    rest = [m.id for m in MANY.models if m.id not in {*first, "challenger-2"}]
    for m in rest:
        h.send_score("r1", m, OUTPUT)
    h.advance_to(10_000)
    (decision,) = h.decisions
    assert [s["model_id"] for s in decision["scores"]] == [*first, "challenger-2", *rest]
    assert [s["model_id"] for s in decision["scores"] if s["late"]] == rest  # after the answer: kept, late
    assert [c["canary"]["model_id"] for c in h.canary] == ["base"]
    # Only the tombstone is left.
    assert h.state and all(text.startswith(TOMBSTONE_PREFIX) for text in h.state.values())


# --- the mailbox stays bounded by the policy's models, whatever arrives ------------------------------

# A second 20-model policy, published live: the official models and the canary stay, the shadows change.
NEXT = parse_policy(
    MANY.to_dict()
    | {
        "version": 2,
        "models": [m for m in MANY.to_dict()["models"] if m["role"] != "shadow"]
        + [{"id": f"next-{i:02}", "role": "shadow"} for i in range(1, 13)],
    }
)
GHOSTS = ("ghost-1", "ghost-2", "ghost-3")  # models no policy lists
IDS = tuple(m.id for m in MANY.models) + ("next-01", "next-02") + GHOSTS
RIDS = ("r0", "r1")
SCORE_REASONS = {names.REASON_TOO_MANY_SCORES, names.REASON_ORPHAN_SCORE, names.REASON_SCORE_AFTER_CLOSE}

Event = tuple[Any, ...]
events = st.lists(
    st.one_of(
        # One model's score, sent ``n`` times (a runner resending, or a stuck one): duplicates past one.
        st.tuples(
            st.just("score"), st.sampled_from(RIDS), st.sampled_from(IDS), st.booleans(), st.integers(1, 20)
        ),
        st.tuples(st.just("all"), st.sampled_from(RIDS)),  # every model of IDS once, in order
        st.tuples(st.just("request"), st.sampled_from(RIDS)),
        st.tuples(st.just("wait"), st.integers(1, 1500)),
        st.tuples(st.just("publish")),
    ),
    max_size=40,
)


def _check_bounded(h: Harness, known: set[str], published: bool) -> None:
    """Every mailbox in keyed state: at most one first score per model the policies list, at most
    ``MAX_EXTRA_SCORES`` others, at most ``MAX_BUFFERED_TICKS`` ticks."""
    for text in h.state.values():
        mb = Mailbox.from_json(text)
        firsts = [s["model_id"] for s in mb.scores if not s["duplicate"] and s["role"] != UNKNOWN_ROLE]
        assert len(firsts) == len(set(firsts)) and set(firsts) <= known
        assert len(mb.scores) - len(firsts) <= MAX_EXTRA_SCORES
        assert len(mb.scores) <= len(known) + MAX_EXTRA_SCORES
        if not published:
            assert len(mb.scores) <= len(MANY.models) + MAX_EXTRA_SCORES
        assert len(mb.ticks) <= MAX_BUFFERED_TICKS
        if len(mb.scores) - len(firsts) == MAX_EXTRA_SCORES:
            event("a mailbox at the cap of extra scores")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.sampled_from(names.CLOCKS))
def test_a_mailbox_holds_at_most_the_policys_models_plus_the_extras_whatever_arrives(
    script: list[Event], clock: str
) -> None:
    """Duplicate scores, unknown models, late scores, scores after the close and before the request, errors,
    and a live policy change: a mailbox never holds more than one score per model the policies in force
    list plus ``MAX_EXTRA_SCORES``, and every score is in a decision log or a dead letter."""
    h = Harness(MANY, clock=clock)
    known = {m.id for m in MANY.models}
    published = False
    sent = 0
    requested: set[str] = set()
    for ev in script:
        if ev[0] == "score":
            _, rid, model, ok, n = ev
            for _ in range(n):
                if ok:
                    h.send_score(rid, model, OUTPUT)
                else:
                    h.send_score(rid, model, None, status="error", error="x")
                sent += 1
                _check_bounded(h, known, published)
        elif ev[0] == "all":
            for model in IDS:
                h.send_score(ev[1], model, OUTPUT)
                sent += 1
                _check_bounded(h, known, published)
        elif ev[0] == "request":
            h.send_request(ev[1])
            requested.add(ev[1])
        elif ev[0] == "wait":
            h.advance_by(ev[1])
        elif not published:
            h.publish_policy(NEXT.to_dict())
            known |= {m.id for m in NEXT.models}
            published = True
            event("a policy change")
        _check_bounded(h, known, published)
    h.advance_by(10**8)  # every close, orphan timeout and tombstone expiry
    assert h.state == {}
    letters = [d for d in h.dead_letters if d["reason"] in SCORE_REASONS]
    assert sum(len(d["scores"]) for d in h.decisions) + len(letters) == sent
    assert sorted(r["request_id"] for r in h.results) == sorted(requested)  # one answer per request
    if any(d["reason"] == names.REASON_TOO_MANY_SCORES for d in letters):
        event("extra scores refused")
    if any(s["late"] for d in h.decisions for s in d["scores"]):
        event("late scores kept")
