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
