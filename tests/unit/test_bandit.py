"""udfs.bandit: Thompson sampling state, choices and updates; pure, seeded, JSON all the way."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udfs import bandit


def test_new_state_is_versioned_json() -> None:
    s = bandit.new_state(["gbt", "logreg"], prior=(1, 1), discount=0.99)
    assert s == {
        "v": 1,
        "prior": [1.0, 1.0],
        "discount": 0.99,
        "updates": 0,
        "arms": {"gbt": [1.0, 1.0], "logreg": [1.0, 1.0]},
    }
    assert bandit.loads(bandit.dumps(s)) == s
    assert json.loads(json.dumps(s)) == s


def test_update_counts_rewards_and_does_not_mutate() -> None:
    s0 = bandit.new_state(["a"])
    s1 = bandit.update(s0, "a", True)
    s2 = bandit.update(s1, "a", 0)
    s3 = bandit.update(s2, "b", 0.25)  # a model first seen in feedback starts at the prior
    assert s0["arms"] == {"a": [1.0, 1.0]} and s0["updates"] == 0
    assert s2["arms"]["a"] == [2.0, 2.0] and s2["updates"] == 2
    assert s3["arms"]["b"] == [1.25, 1.75]
    assert bandit.posterior_mean(s1, "a") == pytest.approx(2 / 3)
    assert bandit.posterior_mean(s1, "never-seen") == 0.5
    with pytest.raises(ValueError, match="^reward:"):
        bandit.update(s0, "a", 1.5)


def test_discount_pulls_every_arm_back_to_the_prior() -> None:
    s = bandit.new_state(["a", "b"], discount=0.5)
    s = bandit.update(s, "a", 1)  # a: [2, 1]
    s = bandit.update(s, "b", 1)  # a decays to [1.5, 1]; b: [2, 1]
    assert s["arms"] == {"a": [1.5, 1.0], "b": [2.0, 1.0]}


def test_choose_follows_the_evidence() -> None:
    s = bandit.new_state(["good", "bad"])
    for _ in range(200):
        s = bandit.update(s, "good", 1)
        s = bandit.update(s, "bad", 0)
    rng = random.Random(1)
    picks = Counter(bandit.choose(s, ["bad", "good"], rng) for _ in range(500))
    assert picks["good"] == 500
    even = bandit.new_state(["x", "y"])
    rng2 = random.Random(2)
    picks = Counter(bandit.choose(even, ["x", "y"], rng2) for _ in range(2000))
    assert 850 < picks["x"] < 1150  # equal posteriors: a fair coin
    assert bandit.choose(s, ["bad"], rng) == "bad"  # only eligible models are ever chosen
    with pytest.raises(ValueError, match="^eligible:"):
        bandit.choose(s, [], rng)


def test_choices_are_reproducible_with_a_seeded_rng() -> None:
    s = bandit.update(bandit.new_state(["a", "b", "c"]), "b", 1)
    run1 = [bandit.choose(s, ["a", "b", "c"], r) for r in [random.Random(9)] for _ in range(50)]
    run2 = [bandit.choose(s, ["a", "b", "c"], r) for r in [random.Random(9)] for _ in range(50)]
    assert run1 == run2 and len(set(run1)) > 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.update(v=2), "state.v"),
        (lambda s: s.update(prior=[1.0]), "state.prior"),
        (lambda s: s.update(prior=[0.0, 1.0]), "state.prior[0]"),
        (lambda s: s.update(discount=0), "state.discount"),
        (lambda s: s.update(discount=1.5), "state.discount"),
        (lambda s: s.update(updates=-1), "state.updates"),
        (lambda s: s.update(arms=[]), "state.arms"),
        (lambda s: s["arms"].update(a=[1.0, -1.0]), "state.arms.a[1]"),
        (lambda s: s["arms"].update(a=[1.0, float("inf")]), "state.arms.a[1]"),
        (lambda s: s["arms"].update(a="x"), "state.arms.a"),
    ],
)
def test_bad_state_names_the_field(mutate: Any, field: str) -> None:
    s = bandit.new_state(["a"])
    s = json.loads(json.dumps(s))
    mutate(s)
    with pytest.raises(ValueError, match="^" + re.escape(field) + ":"):
        bandit.check_state(s)


def test_loads_refuses_unknown_versions() -> None:
    with pytest.raises(ValueError, match="not supported"):
        bandit.loads('{"v": 99}')


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 1)), max_size=60),
    st.floats(0.5, 1.0),
)
def test_state_stays_valid_and_bounded(feedback: list[tuple[str, float]], discount: float) -> None:
    s = bandit.new_state(["a", "b"], discount=discount)
    for m, r in feedback:
        s = bandit.update(s, m, r)
    again = bandit.loads(bandit.dumps(s))
    assert again == s and s["updates"] == len(feedback)
    for mid, (a, b) in s["arms"].items():
        seen = sum(1 for m, _ in feedback if m == mid)
        assert 1.0 <= a <= 1.0 + seen + 1e-9 and 1.0 <= b <= 1.0 + seen + 1e-9
    assert bandit.choose(s, ["c", "a"], random.Random(0)) in {"c", "a"}


# --- what the job uses: one label's rewards at once, and a draw seeded by the request id ------------------


def test_update_many_discounts_once_per_label_and_adds_every_reward() -> None:
    s = bandit.new_state(["a", "b"], discount=0.5)
    s = bandit.update_many(s, {"a": 1, "b": 0})  # nothing to discount yet (all at the prior)
    assert s["arms"] == {"a": [2.0, 1.0], "b": [1.0, 2.0]} and s["updates"] == 1
    s = bandit.update_many(s, {"b": 1.0, "c": True})  # one step of forgetting, then both rewards
    assert s["arms"] == {"a": [1.5, 1.0], "b": [2.0, 1.5], "c": [2.0, 1.0]} and s["updates"] == 2
    with pytest.raises(ValueError, match=r"^rewards\.a:"):
        bandit.update_many(s, {"a": 2})
    assert bandit.update_many(s, {})["updates"] == 3  # a label nobody could be judged on still ages the rest


def test_with_settings_keeps_the_evidence() -> None:
    s = bandit.update_many(bandit.new_state(["a"]), {"a": 1})
    t = bandit.with_settings(s, (2, 3), 0.9)
    assert t["arms"] == s["arms"] and t["prior"] == [2.0, 3.0] and t["discount"] == 0.9
    with pytest.raises(ValueError, match=r"^state\.discount:"):
        bandit.with_settings(s, (1, 1), 0)


def test_a_request_draws_the_same_choice_every_time_and_requests_differ() -> None:
    s = bandit.new_state(["a", "b", "c"])
    picks = [bandit.choose_for_request(s, ["a", "b", "c"], f"r-{i}", "1") for i in range(300)]
    again = [bandit.choose_for_request(s, ["a", "b", "c"], f"r-{i}", "1") for i in range(300)]
    assert picks == again
    counts = Counter(picks)
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 60  # at the prior: uniform-ish
    # The salt (the policy version) gives an independent draw for the same id.
    other = [bandit.choose_for_request(s, ["a", "b", "c"], f"r-{i}", "2") for i in range(300)]
    assert other != picks


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from([0.0, 1.0, 0.5]), max_size=3),
        max_size=40,
    ),
    st.floats(0.5, 1.0),
    st.text(min_size=1, max_size=20),
)
def test_update_many_equals_sorted_single_updates_without_discount_and_choices_are_stable(
    labels: list[dict[str, float]], discount: float, rid: str
) -> None:
    s = bandit.new_state(["a", "b"], discount=discount)
    plain = bandit.new_state(["a", "b"])
    singles = plain
    for rewards in labels:
        s = bandit.update_many(s, rewards)
        plain = bandit.update_many(plain, rewards)
        for m in sorted(rewards):
            singles = bandit.update(singles, m, rewards[m])
    # Without a discount, one update per label or one per model is the same evidence.
    assert plain["arms"] == {m: pytest.approx(ab) for m, ab in singles["arms"].items()}
    assert s["updates"] == len(labels) and bandit.loads(bandit.dumps(s)) == s
    for a, b in s["arms"].values():
        assert 1.0 <= a <= 1.0 + len(labels) + 1e-9 and 1.0 <= b <= 1.0 + len(labels) + 1e-9
    first = bandit.choose_for_request(s, ["a", "b", "c"], rid)
    assert first in {"a", "b", "c"} and bandit.choose_for_request(s, ["a", "b", "c"], rid) == first


@settings(max_examples=30, deadline=None)
@given(st.integers(20, 200), st.floats(0.7, 0.95), st.floats(0.05, 0.4))
def test_with_enough_labels_the_better_model_gets_nearly_all_requests(
    n: int, good: float, bad: float
) -> None:
    """Posteriors at their expected counts after n labels: the better model wins most seeded draws."""
    s = bandit.new_state(["good", "bad"])
    s = {**s, "arms": {"good": [1 + good * n, 1 + (1 - good) * n], "bad": [1 + bad * n, 1 + (1 - bad) * n]}}
    picks = Counter(bandit.choose_for_request(s, ["bad", "good"], f"q{i}") for i in range(200))
    assert picks["good"] >= 190
