"""The promotion gate: from labelled evidence to the next policy file.

A model's life in the rendezvous architecture is a sequence of roles in the policy, never a redeploy:

    shadow ──► challenger ──► incumbent
      ▲            │               │
      └────────────┴── demoted ────┘

- **shadow**: sees every request, is archived and measured, never answers officially. A shadow with
  enough labelled answers, above the quality floor, no drift alert, and an AUC within
  ``shadow_max_deficit`` of the incumbent's (on the same requests) becomes a **challenger** (it may now answer when the
  incumbent is late).
- **challenger**: answers officially as a fallback. The best challenger becomes the **incumbent** when,
  with at least ``min_labelled`` labelled answers of each, its AUC beats the incumbent's by ``min_gain``
  on the requests both answered, and that gain is ``min_z`` standard errors from zero (DeLong's paired
  test: the two AUCs on the same requests); the old incumbent becomes the first challenger (it stays a
  fast, known-good fallback). A model that joined later is compared on the traffic it saw, not the
  incumbent's whole window.
- **demotion**: an incumbent or challenger whose AUC falls below ``auc_floor`` (with enough labels) or
  that a drift alert names goes back to **shadow** (still measured, so it can earn its way back). A
  demoted incumbent is replaced by the best eligible challenger.

Backstops and the canary are left alone: the backstop's job is to be simple and always there, the
canary's to stay frozen. The gate never leaves a policy without an official model. Its output is the
next policy file (version bumped), checked with ``udfs.policy.parse_policy`` before it is returned;
deploying it is the usual policy change (savepoint, restart with the new file).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import pandas as pd
import yaml

from evaluation.quality import PairedAuc, metrics, paired_auc
from udfs.policy import ModelSpec, Policy, PolicyError, parse_policy

PROMOTE, KEEP, DEMOTE = "promote", "keep", "demote"
# Alerts that say something about a model (input drift is about the requests, not one model).
MODEL_ALERT_KINDS = frozenset({"score_drift", "canary_agreement"})


@dataclass(frozen=True)
class GateConfig:
    min_gain: float = 0.005  # AUC points a challenger must win by
    min_z: float = 0.0  # standard errors its gain must lie above zero (1.645: one-sided 95 %); 0: off
    min_labelled: int = 500  # labelled answers each side needs before quality counts
    auc_floor: float = 0.7  # below this (with enough labels) an official model is demoted
    shadow_max_deficit: float = 0.01  # a shadow within this of the incumbent's AUC becomes a challenger
    new_challenger_wait_ms: int | None = None  # None: the longest wait_ms among current official models

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GateConfig:
        """Validate plain data; a bad value raises ValueError naming the field."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError("gate config: must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(known))})")
        d = asdict(cls()) | dict(data)
        for name, lo, hi in (
            ("min_gain", 0.0, 1.0),
            ("auc_floor", 0.0, 1.0),
            ("shadow_max_deficit", 0.0, 1.0),
            ("min_z", 0.0, 10.0),
        ):
            v = d[name]
            if not isinstance(v, int | float) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"{name}: must be a number in [{lo:g}, {hi:g}], got {v!r}")
            d[name] = float(v)
        v = d["min_labelled"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"min_labelled: must be a positive integer, got {v!r}")
        v = d["new_challenger_wait_ms"]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"new_challenger_wait_ms: must be null or a non-negative integer, got {v!r}")
        return cls(**d)


@dataclass(frozen=True)
class ModelVerdict:
    model_id: str
    role: str
    new_role: str
    verdict: str  # promote | keep | demote
    labelled: int
    auc: float | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GateResult:
    action: str  # demote if anything was demoted, else promote if anything was promoted, else keep
    verdicts: tuple[ModelVerdict, ...]
    policy: Policy  # the next policy (the input one when nothing changes)
    policy_yaml: str | None  # the next policy file's text; None when nothing changes

    @property
    def reasons(self) -> list[str]:
        return [r for v in self.verdicts for r in v.reasons]

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "policy_version": self.policy.version,
            "verdicts": [asdict(v) | {"reasons": list(v.reasons)} for v in self.verdicts],
            "policy_yaml": self.policy_yaml,
        }


@dataclass
class _Model:
    spec: ModelSpec
    labelled: int
    auc: float | None
    alerts: list[str]
    new_role: str = ""
    reasons: list[str] | None = None

    def __post_init__(self) -> None:
        self.new_role = self.spec.role
        self.reasons = []

    @property
    def id(self) -> str:
        return self.spec.id

    def say(self, text: str) -> None:
        assert self.reasons is not None
        self.reasons.append(f"{self.id}: {text}")


def _alert_subjects(alerts: Iterable[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in alerts:
        d = a if isinstance(a, Mapping) else a.to_dict()
        if d.get("kind") in MODEL_ALERT_KINDS:
            out.setdefault(str(d["subject"]), []).append(str(d.get("message") or d.get("metric")))
    return out


def _paired(a: pd.DataFrame, b: pd.DataFrame) -> PairedAuc:
    """Two models' AUCs on the labelled requests (0/1 truth) both gave a probability for."""

    def usable(g: pd.DataFrame) -> pd.DataFrame:
        ok = g["label_true"].astype(float).isin((0.0, 1.0)) & g["probability"].notna()
        return g.loc[ok, ["request_id", "probability", "label_true"]].drop_duplicates("request_id")

    both = usable(a).merge(usable(b)[["request_id", "probability"]], on="request_id", suffixes=("_a", "_b"))
    return paired_auc(both["label_true"], both["probability_a"], both["probability_b"])


def _fmt_z(z: float) -> str:
    return "n/a" if math.isnan(z) else f"{z:.2f}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def gate(  # noqa: C901 - the gate's rules in order, one branch each (docs/evaluation.md)
    rows: pd.DataFrame,
    policy: Policy | Mapping[str, Any],
    config: GateConfig | None = None,
    alerts: Iterable[Any] = (),
) -> GateResult:
    """Promote, keep or demote each model from its labelled rows (``labels.join_labels``) and alerts."""
    cfg = config or GateConfig()
    pol = policy if isinstance(policy, Policy) else parse_policy(policy)
    flagged = _alert_subjects(alerts)
    models: list[_Model] = []
    rows_of: dict[str, pd.DataFrame] = {}
    for spec in pol.models:
        g = rows_of[spec.id] = rows[rows["model_id"] == spec.id]
        q = metrics(g) if len(g) else {"answered": 0, "auc": math.nan}
        auc = None if math.isnan(q["auc"]) else float(q["auc"])
        models.append(_Model(spec, int(q["answered"]), auc, flagged.get(spec.id, [])))
    by_id = {m.id: m for m in models}

    def paired(a: _Model, b: _Model) -> PairedAuc:
        return _paired(rows_of[a.id], rows_of[b.id])

    def too_few(pair: PairedAuc, incumbent: _Model) -> str | None:
        """Why a paired comparison says nothing yet, or None when it can be judged."""
        if pair.n >= cfg.min_labelled and not math.isnan(pair.gain):
            return None
        return (
            f"kept: {pair.n} labelled requests answered by both it and incumbent {incumbent.id}, "
            f"fewer than min_labelled {cfg.min_labelled} (or one class only)"
        )

    def enough(m: _Model) -> bool:
        return m.labelled >= cfg.min_labelled and m.auc is not None

    # 1. Demotions: below the floor, or named by a drift alert.
    for m in models:
        if m.spec.role not in ("incumbent", "challenger"):
            continue
        why = []
        if enough(m) and m.auc is not None and m.auc < cfg.auc_floor:
            why.append(
                f"AUC {_fmt(m.auc)} below the floor {cfg.auc_floor:g} on {m.labelled} labelled answers"
            )
        why += [f"drift alert: {text}" for text in m.alerts]
        if why:
            m.new_role = "shadow"
            for w in why:
                m.say(f"demoted to shadow: {w}")
    if not any(m.new_role in ("incumbent", "challenger", "backstop") for m in models):
        # Never leave the policy without an official model: keep the best demoted one where it was.
        keep = max((m for m in models if m.spec.official), key=lambda m: -1.0 if m.auc is None else m.auc)
        keep.new_role = keep.spec.role
        keep.say("kept despite the above: it is the last model that can answer officially")

    # 2. Challenger -> incumbent.
    incumbent = next((m for m in models if m.spec.role == "incumbent"), None)
    eligible = [
        m
        for m in models
        if m.spec.role == "challenger" and m.new_role == "challenger" and enough(m) and not m.alerts
    ]
    eligible = [m for m in eligible if m.auc is not None and m.auc >= cfg.auc_floor]
    best = max(eligible, key=lambda m: m.auc or 0.0, default=None)
    new_incumbent: _Model | None = None
    if best is not None:
        if incumbent is None or incumbent.new_role != "incumbent":
            new_incumbent = best
            whom = "no incumbent" if incumbent is None else f"incumbent {incumbent.id} demoted"
            best.say(f"promoted to incumbent: {whom}; best challenger with AUC {_fmt(best.auc)}")
        elif not enough(incumbent):
            best.say(
                f"kept: incumbent {incumbent.id} has {incumbent.labelled} labelled answers, "
                f"fewer than min_labelled {cfg.min_labelled}, so there is nothing to compare with"
            )
        else:
            pair = paired(best, incumbent)
            on = (
                f"on the {pair.n} labelled requests both answered ({pair.positives} positive), "
                f"z {_fmt_z(pair.z)}"
            )
            if (short := too_few(pair, incumbent)) is not None:
                best.say(short)
            elif pair.gain >= cfg.min_gain and pair.z >= cfg.min_z:
                new_incumbent = best
                best.say(
                    f"promoted to incumbent: AUC {_fmt(pair.auc_a)} beats {incumbent.id}'s "
                    f"{_fmt(pair.auc_b)} by {pair.gain:.4f} >= min_gain {cfg.min_gain:g} {on}"
                    + (f" >= min_z {cfg.min_z:g}" if cfg.min_z else "")
                )
                incumbent.new_role = "challenger"
                incumbent.say(f"moved to challenger: {best.id} is better")
            else:
                short = (
                    f"gain {pair.gain:.4f} < min_gain {cfg.min_gain:g}"
                    if pair.gain < cfg.min_gain
                    else f"z {_fmt_z(pair.z)} < min_z {cfg.min_z:g}"
                )
                best.say(
                    f"kept: AUC {_fmt(pair.auc_a)} vs incumbent {incumbent.id}'s {_fmt(pair.auc_b)} {on}: "
                    + short
                )
    if new_incumbent is not None:
        new_incumbent.new_role = "incumbent"
    for m in models:
        if m.spec.role == "challenger" and m.new_role == "challenger" and m is not best:
            if not enough(m):
                m.say(f"kept: {m.labelled} labelled answers, fewer than min_labelled {cfg.min_labelled}")
            else:
                m.say(f"kept: AUC {_fmt(m.auc)}, not the best challenger")

    # 3. Shadow -> challenger (never one that was just demoted).
    reference = incumbent if incumbent is not None and enough(incumbent) else None
    for m in models:
        if m.spec.role != "shadow":
            continue
        if not enough(m):
            m.say(f"kept: {m.labelled} labelled answers, fewer than min_labelled {cfg.min_labelled}")
        elif m.alerts:
            m.say("kept: a drift alert names it")
        elif m.auc is not None and m.auc < cfg.auc_floor:
            m.say(f"kept: AUC {_fmt(m.auc)} below the floor {cfg.auc_floor:g}")
        elif reference is None:
            m.say("kept: no incumbent with enough labels to compare with")
        elif (short := too_few(pair := paired(m, reference), reference)) is not None:
            m.say(short)
        elif pair.gain >= -cfg.shadow_max_deficit:
            m.new_role = "challenger"
            m.say(
                f"promoted to challenger: AUC {_fmt(pair.auc_a)} within {cfg.shadow_max_deficit:g} of "
                f"incumbent {reference.id}'s {_fmt(pair.auc_b)} on the {pair.n} labelled requests both answered"
            )
        else:
            m.say(
                f"kept: AUC {_fmt(pair.auc_a)} more than {cfg.shadow_max_deficit:g} below {reference.id}'s "
                f"{_fmt(pair.auc_b)} on the {pair.n} labelled requests both answered"
            )
    for m in models:
        if m.new_role == m.spec.role and not m.reasons and m.spec.role in ("incumbent", "backstop", "canary"):
            m.say(f"kept as {m.spec.role}" + (f" (AUC {_fmt(m.auc)})" if m.auc is not None else ""))

    verdicts = tuple(_verdict(m) for m in models)
    if all(v.verdict == KEEP for v in verdicts):
        return GateResult(KEEP, verdicts, pol, None)
    # Demote when something lost its place for cause; an incumbent displaced by a better one is a promotion.
    demoted = any(v.new_role == "shadow" and v.role != "shadow" for v in verdicts)
    action = DEMOTE if demoted else PROMOTE
    nxt = _next_policy(pol, models, by_id, cfg)
    return GateResult(action, verdicts, nxt, policy_yaml(nxt, [r for v in verdicts for r in v.reasons]))


_RANK = {"shadow": 0, "challenger": 1, "incumbent": 2}


def _verdict(m: _Model) -> ModelVerdict:
    old, new = _RANK.get(m.spec.role), _RANK.get(m.new_role)
    verdict = KEEP
    if old is not None and new is not None and new != old:
        verdict = PROMOTE if new > old else DEMOTE
    if m.spec.role == "incumbent" and m.new_role == "challenger":
        verdict = DEMOTE
    return ModelVerdict(m.id, m.spec.role, m.new_role, verdict, m.labelled, m.auc, tuple(m.reasons or ()))


def _next_policy(pol: Policy, models: list[_Model], by_id: dict[str, _Model], cfg: GateConfig) -> Policy:
    """New roles, preference order incumbent > challengers > backstops, version + 1; validated."""
    waits = [m.wait_ms for m in pol.official if m.wait_ms is not None]
    new_wait = (
        cfg.new_challenger_wait_ms if cfg.new_challenger_wait_ms is not None else max(waits, default=None)
    )
    if new_wait is not None:
        new_wait = min(new_wait, pol.deadline_ms)

    def spec(m: _Model) -> ModelSpec:
        if m.new_role == m.spec.role:
            return m.spec
        if m.new_role == "shadow":
            return replace(m.spec, role="shadow", wait_ms=None)
        if m.spec.role == "shadow":  # promoted to challenger: it never had a wait
            return replace(m.spec, role=m.new_role, wait_ms=new_wait)
        return replace(m.spec, role=m.new_role)

    incumbents = [m for m in models if m.new_role == "incumbent"]
    # The displaced incumbent first, then the challengers in their old order, then promoted shadows.
    challengers = [m for m in models if m.new_role == "challenger"]
    challengers.sort(key=lambda m: (m.spec.role == "shadow", m.spec.role != "incumbent"))
    rest = [m for m in models if m.new_role in ("backstop", "canary")]
    shadows = [m for m in models if m.new_role == "shadow" and m.spec.role == "shadow"]
    shadows += [m for m in models if m.new_role == "shadow" and m.spec.role != "shadow"]
    ordered = incumbents + challengers + rest + shadows
    assert sorted(m.id for m in ordered) == sorted(by_id), "every model placed exactly once"
    candidate = replace(pol, version=pol.version + 1, models=tuple(spec(m) for m in ordered))
    try:
        checked = parse_policy(yaml.safe_load(policy_yaml(candidate, [])))
    except PolicyError as e:  # a bug here, not bad input: the gate must never emit an unusable policy
        raise AssertionError(f"the gate built an invalid policy: {e}") from e
    assert checked == candidate, (checked, candidate)
    return checked


def policy_yaml(policy: Policy, reasons: Iterable[str]) -> str:
    """The policy file's text, in the house layout (one flow mapping per model), reasons as comments."""
    d = policy.to_dict()
    lines = [f"# Written by the promotion gate (evaluation.gate): policy version {policy.version}."]
    lines += ["# " + " ".join(r.split()) for r in reasons]
    for key, value in d.items():
        if key == "models":
            lines.append("models:")
            for m in value:
                lines.append("  - " + _flow(m))
        else:
            lines.append(_flow({key: value})[1:-1])
    return "\n".join(lines) + "\n"


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
