"""evaluation.bandit_sim: Thompson sampling against fixed policies, seeded and deterministic."""

from __future__ import annotations

import json
from functools import cache

import pytest

from evaluation.bandit_sim import POLICIES, PolicyResult, SimConfig, simulate


@cache
def default_run() -> dict[str, PolicyResult]:
    return simulate(SimConfig())


def test_every_policy_runs_and_the_oracle_has_no_regret() -> None:
    r = default_run()
    assert list(r) == list(POLICIES)
    assert r["oracle"].regret == 0.0
    assert r["incumbent"].regret == pytest.approx((0.88 - 0.70) * 5000)  # stuck on gbt after it degrades
    for res in r.values():
        assert len(res.regret_curve) == 100 and res.regret_curve[-1] == pytest.approx(res.regret)
        assert sum(res.share_before.values()) == pytest.approx(1.0, abs=1e-3)
        json.dumps(res.to_dict())


def test_thompson_beats_uniform_and_the_incumbent() -> None:
    r = default_run()
    for name in ("thompson", "thompson_all"):
        assert r[name].regret < 0.5 * r["uniform"].regret, (name, r[name].regret, r["uniform"].regret)
        assert r[name].regret < r["incumbent"].regret
        assert r[name].correct > r["uniform"].correct
    assert r["thompson_all"].regret <= r["thompson"].regret  # more labels, less regret


def test_thompson_moves_traffic_off_the_degraded_model() -> None:
    r = default_run()
    for name in ("thompson", "thompson_all"):
        res = r[name]
        assert res.share_before["gbt"] > 0.8  # gbt was best: it got most traffic ...
        assert res.share_last_quarter["gbt"] < 0.05  # ... and lost it once it degraded
        assert res.share_last_quarter["logreg"] > 0.8  # to the model that is now best


def test_deterministic() -> None:
    cfg = SimConfig(steps=2000, degrade_at=1000)
    assert simulate(cfg) == simulate(cfg)
    assert simulate(cfg)["thompson"] != simulate(SimConfig(steps=2000, degrade_at=1000, seed=8))["thompson"]


def test_without_degradation_thompson_settles_on_the_best() -> None:
    r = simulate(SimConfig(steps=4000, degrade_model=None, degrade_at=0))
    assert r["incumbent"].regret == 0.0  # the incumbent is the best model
    assert r["thompson"].share_last_quarter["gbt"] > 0.8
    assert r["thompson"].share_after == {"gbt": 0.0, "logreg": 0.0, "tree": 0.0}  # no "after" period


def test_delayed_labels_still_beat_uniform() -> None:
    r = simulate(SimConfig(label_delay=300))
    assert r["thompson"].regret < r["uniform"].regret
    assert r["thompson"].share_last_quarter["gbt"] < 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"accuracies": {}}, "accuracies"),
        ({"accuracies": {"a": 1.5}, "incumbent": "a"}, "accuracies.a"),
        ({"incumbent": "nope"}, "incumbent"),
        ({"degrade_model": "nope"}, "degrade_model"),
        ({"steps": 0, "degrade_at": 0}, "steps"),
        ({"degrade_at": 20_000}, "degrade_at"),
        ({"degraded_accuracy": -0.1}, "degraded_accuracy"),
        ({"discount": 0.0}, "discount"),
        ({"label_delay": -1}, "label_delay"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        SimConfig(**kwargs)  # type: ignore[arg-type]
