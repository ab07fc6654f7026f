"""evaluation.gate: promote / keep / demote from labelled rows, and the next policy file it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.drift import Alert
from evaluation.gate import DEMOTE, KEEP, PROMOTE, GateConfig, gate, policy_yaml
from evaluation.quality import roc_auc
from udfs.policy import ModelSpec, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")


def model_rows(model: str, n: int, skill: float, seed: int) -> pd.DataFrame:
    """n labelled answers whose probabilities separate the classes by `skill` (0: coin, large: perfect)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    p = 1 / (1 + np.exp(-(skill * (y - 0.5) + rng.normal(0, 1, n))))
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "model_id": model,
            "probability": p,
            "label": np.nan,
            "value": np.nan,
            "label_true": y,
        }
    )


def rows(**skills: tuple[int, float]) -> pd.DataFrame:
    return pd.concat(
        [model_rows(m, n, s, seed=i) for i, (m, (n, s)) in enumerate(skills.items())], ignore_index=True
    )


def auc_of(df: pd.DataFrame, model: str) -> float:
    g = df[df.model_id == model]
    return roc_auc(g.label_true, g.probability)


def roles(policy: Any) -> list[tuple[str, str, int | None]]:
    return [(m.id, m.role, m.wait_ms) for m in policy.models]


def test_a_better_challenger_becomes_incumbent() -> None:
    data = rows(gbt=(600, 2.0), logreg=(600, 3.0), tree=(600, 1.0))
    assert auc_of(data, "logreg") > auc_of(data, "gbt") + 0.05 > auc_of(data, "gbt") > 0.7
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6))
    assert result.action == PROMOTE
    assert roles(result.policy) == [
        ("logreg", "incumbent", 70),  # each model keeps its own wait
        ("gbt", "challenger", 40),
        ("tree", "backstop", None),
        ("base", "canary", None),
        ("mlp", "shadow", None),
    ]
    assert result.policy.version == DEFAULT.version + 1
    v = {x.model_id: x for x in result.verdicts}
    assert (v["logreg"].verdict, v["gbt"].verdict, v["mlp"].verdict) == (PROMOTE, DEMOTE, KEEP)
    assert v["logreg"].labelled == 600 and v["logreg"].auc == pytest.approx(auc_of(data, "logreg"))
    assert any("min_gain" in r and "logreg" in r for r in v["logreg"].reasons)
    assert any("fewer than min_labelled" in r for r in v["mlp"].reasons)  # the shadow has no labels yet
    # The text is a policy file that loads to exactly the returned policy, with the reasons as comments.
    assert result.policy_yaml is not None
    assert parse_policy(yaml.safe_load(result.policy_yaml)) == result.policy
    assert "# logreg: promoted to incumbent" in result.policy_yaml
    assert "  - {id: logreg, role: incumbent, wait_ms: 70}" in result.policy_yaml
    json.dumps(result.to_dict())


def test_a_gain_below_min_gain_keeps_everything() -> None:
    data = rows(gbt=(600, 2.0), logreg=(600, 2.0))
    gain = auc_of(data, "logreg") - auc_of(data, "gbt")
    cfg = GateConfig(min_labelled=500, auc_floor=0.6, min_gain=abs(gain) + 0.001)
    result = gate(data, DEFAULT, cfg)
    assert result.action == KEEP and result.policy_yaml is None and result.policy == DEFAULT
    assert any("< min_gain" in r for r in result.reasons)
    # ... and the same data with a min_gain just under the gain promotes (when the challenger is ahead).
    if gain > 0:
        assert (
            gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=gain - 1e-9)).action
            == PROMOTE
        )


def test_min_z_asks_that_the_gain_be_more_than_sampling_noise() -> None:
    """The same gain on few requests is noise, on many it is a finding: min_z tells them apart."""
    few = rows(gbt=(600, 2.0), logreg=(600, 2.1))  # gain ~0.012, z ~0.9
    cfg = GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.0, min_z=1.645)
    kept = gate(few, DEFAULT, cfg)
    assert kept.action == KEEP and any("< min_z 1.645" in r for r in kept.reasons), kept.reasons
    assert gate(few, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.0)).action == PROMOTE
    many = rows(gbt=(20_000, 2.0), logreg=(20_000, 2.1))  # gain ~0.010, z ~4.2
    promoted = gate(many, DEFAULT, cfg)
    assert promoted.action == PROMOTE
    [why] = [r for r in promoted.reasons if r.startswith("logreg: promoted")]
    assert "on the 20000 labelled requests both answered" in why and ">= min_z 1.645" in why


def test_a_model_that_joined_later_is_compared_on_the_requests_it_saw() -> None:
    """The incumbent's window holds a hard stretch the later model never saw: on its whole window the
    incumbent looks worse, on the requests both answered they are alike, and nothing is promoted."""
    hard = model_rows("gbt", 2000, 0.3, seed=1)
    easy = model_rows("gbt", 2000, 3.0, seed=2).assign(request_id=[f"s{i}" for i in range(2000)])
    later = model_rows("logreg", 2000, 3.0, seed=3).assign(request_id=[f"s{i}" for i in range(2000)])
    data = pd.concat([hard, easy, later], ignore_index=True)
    assert auc_of(data, "logreg") > auc_of(data, "gbt") + 0.1  # unpaired, it would be promoted
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.02))
    assert result.action == KEEP, result.reasons
    assert any("logreg: kept" in r and "2000 labelled requests both answered" in r for r in result.reasons)


def test_models_with_no_requests_in_common_are_not_compared() -> None:
    """Each has enough labels of its own, but none on the same requests: neither the challenger nor the
    shadow can be judged against the incumbent, so both stay where they are."""
    gbt = model_rows("gbt", 600, 1.0, seed=1)
    logreg = model_rows("logreg", 600, 4.0, seed=2).assign(request_id=[f"l{i}" for i in range(600)])
    mlp = model_rows("mlp", 600, 4.0, seed=3).assign(request_id=[f"m{i}" for i in range(600)])
    result = gate(pd.concat([gbt, logreg, mlp]), DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6))
    assert result.action == KEEP, result.reasons
    for model in ("logreg", "mlp"):
        assert (
            f"{model}: kept: 0 labelled requests answered by both it and incumbent gbt, fewer than "
            "min_labelled 500 (or one class only)" in result.reasons
        )


def test_too_few_labels_keep_everything() -> None:
    data = rows(gbt=(600, 1.0), logreg=(300, 4.0))
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6))
    assert result.action == KEEP
    assert any("logreg: kept: 300 labelled answers" in r for r in result.reasons)
    data = rows(gbt=(300, 1.0), logreg=(600, 4.0))
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6))
    assert result.action == KEEP
    assert any("incumbent gbt has 300 labelled answers" in r for r in result.reasons)


def test_an_incumbent_below_the_floor_is_demoted_and_replaced() -> None:
    data = rows(gbt=(600, 0.2), logreg=(600, 2.0))
    assert auc_of(data, "gbt") < 0.7 < auc_of(data, "logreg")
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.7))
    assert result.action == DEMOTE
    assert roles(result.policy) == [
        ("logreg", "incumbent", 70),
        ("tree", "backstop", None),
        ("base", "canary", None),
        ("mlp", "shadow", None),
        ("gbt", "shadow", None),  # a shadow has no wait: it never answers officially
    ]
    v = {x.model_id: x for x in result.verdicts}
    assert v["gbt"].verdict == DEMOTE and "below the floor" in v["gbt"].reasons[0]
    assert "incumbent gbt demoted" in v["logreg"].reasons[0]


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_drift_alert_demotes_the_model_it_names(as_dict: bool) -> None:
    data = rows(gbt=(600, 2.0), logreg=(600, 2.5))
    alert = Alert(
        "score_drift", "logreg", "psi", 0.9, 0.25, "above", 500, 0, 10, 10, "logreg: psi 0.9 above 0.25"
    )
    noise = Alert(
        "input_drift", "gbt", "psi", 0.9, 0.25, "above", 500, None, None, 10, "feature, not a model"
    )
    alerts: list[Any] = [alert.to_dict(), noise.to_dict()] if as_dict else [alert, noise]
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.001), alerts)
    assert result.action == DEMOTE
    assert roles(result.policy)[:2] == [("gbt", "incumbent", 40), ("tree", "backstop", None)]
    assert ("logreg", "shadow", None) in roles(result.policy)
    v = {x.model_id: x for x in result.verdicts}
    assert v["logreg"].reasons == ("logreg: demoted to shadow: drift alert: logreg: psi 0.9 above 0.25",)
    assert v["gbt"].verdict == KEEP  # the input_drift alert is about a feature, not a model


def test_a_good_shadow_becomes_a_challenger() -> None:
    data = rows(gbt=(600, 2.0), logreg=(600, 1.5), mlp=(600, 2.3))
    assert auc_of(data, "mlp") >= auc_of(data, "gbt") - 0.01 and auc_of(data, "logreg") < auc_of(data, "gbt")
    result = gate(data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.2))
    assert result.action == PROMOTE
    assert roles(result.policy) == [
        ("gbt", "incumbent", 40),
        ("logreg", "challenger", 70),
        ("mlp", "challenger", 70),  # the longest wait in the policy, after the existing challengers
        ("tree", "backstop", None),
        ("base", "canary", None),
    ]
    configured = gate(
        data, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6, min_gain=0.2, new_challenger_wait_ms=55)
    )
    assert ("mlp", "challenger", 55) in roles(configured.policy)
    weak = rows(gbt=(600, 2.0), mlp=(600, 1.0))
    assert gate(weak, DEFAULT, GateConfig(min_labelled=500, auc_floor=0.6)).action == KEEP


def test_the_last_official_model_is_never_demoted() -> None:
    policy = parse_policy(
        {
            "version": 4,
            "deadline_ms": 50,
            "models": [{"id": "a", "role": "incumbent"}, {"id": "b", "role": "challenger"}],
        }
    )
    data = rows(a=(600, 0.3), b=(600, 0.1))
    result = gate(data, policy, GateConfig(min_labelled=500, auc_floor=0.9))
    assert any(m.official for m in result.policy.models)
    kept = [m for m in result.policy.models if m.official]
    assert [m.id for m in kept] == ["a"]  # the better of the two stays
    assert any("last model that can answer officially" in r for r in result.reasons)


def test_policy_can_be_given_as_plain_data() -> None:
    data = rows(gbt=(600, 2.0), logreg=(600, 3.0))
    assert (
        gate(data, DEFAULT.to_dict(), GateConfig(auc_floor=0.6)).policy
        == gate(data, DEFAULT, GateConfig(auc_floor=0.6)).policy
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"min_gain": -0.1}, "min_gain"),
        ({"min_gain": "x"}, "min_gain"),
        ({"auc_floor": 1.5}, "auc_floor"),
        ({"shadow_max_deficit": True}, "shadow_max_deficit"),
        ({"min_labelled": 0}, "min_labelled"),
        ({"min_z": -1}, "min_z"),
        ({"min_z": 11}, "min_z"),
        ({"min_labelled": 10.0}, "min_labelled"),
        ({"new_challenger_wait_ms": -1}, "new_challenger_wait_ms"),
        ({"floor": 0.5}, "floor"),
    ],
)
def test_bad_gate_config_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        GateConfig.from_dict(data)


def test_gate_config_from_dict() -> None:
    assert GateConfig.from_dict(None) == GateConfig() == GateConfig.from_dict({})
    assert GateConfig.from_dict({"min_gain": 0, "min_labelled": 5}).min_gain == 0.0


def test_policy_yaml_of_the_default_policy_round_trips() -> None:
    assert parse_policy(yaml.safe_load(policy_yaml(DEFAULT, ["a\nb"]))) == DEFAULT
    assert "# a b\n" in policy_yaml(DEFAULT, ["a\nb"])


skills = st.tuples(st.integers(0, 800), st.floats(-1.0, 4.0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(skills, skills, skills, st.booleans(), st.floats(0.5, 0.9))
def test_any_evidence_gives_a_usable_policy(
    gbt: tuple[int, float], logreg: tuple[int, float], mlp: tuple[int, float], alert: bool, floor: float
) -> None:
    data = rows(gbt=gbt, logreg=logreg, mlp=mlp)
    alerts = (
        [Alert("canary_agreement", "gbt", "agreement", 0.5, 0.9, "below", 300, 0, 1, 1, "gbt")]
        if alert
        else []
    )
    result = gate(data, DEFAULT, GateConfig(min_labelled=200, auc_floor=floor), alerts)
    new = result.policy
    assert sorted(m.id for m in new.models) == sorted(m.id for m in DEFAULT.models)
    assert sum(m.role == "incumbent" for m in new.models) <= 1
    assert next(m for m in new.models if m.id == "tree") == ModelSpec("tree", "backstop")
    assert next(m for m in new.models if m.id == "base") == ModelSpec("base", "canary")
    if result.action == KEEP:
        assert new == DEFAULT and result.policy_yaml is None
    else:
        assert new.version == 2 and parse_policy(yaml.safe_load(result.policy_yaml or "")) == new
    if alert:  # a model named by an alert never ends up official
        assert next(m for m in new.models if m.id == "gbt").role == "shadow"
    for v in result.verdicts:
        if v.labelled < 200:  # too little evidence: never promoted, and demoted only by an alert
            assert v.verdict != PROMOTE, v
            if v.new_role == "shadow" and v.role != "shadow":
                assert alert and v.model_id == "gbt", v
