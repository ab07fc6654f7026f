"""The policy: which model's answer becomes the official one, and when. Pure Python, no pyflink.

A policy file (YAML) is parsed once, at start-up, into frozen objects; a bad file fails with a
``PolicyError`` that names the field. ``decide`` is a pure function of the policy, what the
mailbox holds and the time, so it can be tested for every arrival order and timing.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from udfs.wire_in import MAX_DEADLINE_MS, MODEL_ID_RE, check_output

ROLES = ("incumbent", "challenger", "backstop", "canary", "shadow")
OFFICIAL_ROLES = frozenset({"incumbent", "challenger", "backstop"})
DECIDE_MODES = ("first_in_order", "majority_vote", "weighted_average", "thompson")
MAX_WEIGHT = 1e6  # bounded (so also finite): a weighted sum never overflows to inf, the mean to NaN
# Every request's mailbox keeps each model's first score and is rewritten whole on every score, so a
# request's cost in the job (and its state) grows with the models: a bound that holds for every policy.
MAX_MODELS = 100

_TOP_FIELDS = {
    "version",
    "deadline_ms",
    "decide",
    "models",
    "on_no_answer",
    "late_window_ms",
    "orphan_timeout_ms",
    "dedupe_retention_ms",
    "min_votes",
    "threshold",
    "bandit",
}
_MODEL_FIELDS = {"id", "role", "wait_ms", "weight"}
_BANDIT_FIELDS = {"prior", "discount"}


class PolicyError(ValueError):
    """A policy file that cannot be used; the message starts with the offending field."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    role: str
    wait_ms: int | None = None  # None: wait up to the deadline
    weight: float = 1.0

    @property
    def official(self) -> bool:
        return self.role in OFFICIAL_ROLES


@dataclass(frozen=True)
class BanditSpec:
    """``decide: thompson``: the Beta prior every model starts from and the per-label discount
    (``udfs.bandit``; 1.0 keeps all evidence, 0.999 lets it fade over ~1,000 labels)."""

    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    discount: float = 1.0

    @property
    def prior(self) -> tuple[float, float]:
        return (self.prior_alpha, self.prior_beta)


@dataclass(frozen=True)
class Policy:
    version: int
    deadline_ms: int
    decide: str
    models: tuple[ModelSpec, ...]
    on_no_answer_json: str = "null"  # kept as JSON text so the policy stays hashable and frozen
    late_window_ms: int = 1000
    orphan_timeout_ms: int = 10_000
    dedupe_retention_ms: int = 600_000
    min_votes: int = 1
    threshold: float = 0.5
    bandit: BanditSpec | None = None  # set (defaults filled in) exactly when decide is thompson

    # Derived views, computed once per policy object (they are asked for on every record).
    @functools.cached_property
    def official(self) -> tuple[ModelSpec, ...]:
        """Models whose answer may become official, in preference order."""
        return tuple(m for m in self.models if m.official)

    @property
    def bandit_arms(self) -> tuple[str, ...]:
        """The models Thompson sampling chooses among: the official ones except backstops (a backstop is
        the reliable last resort, not a contender), or every official one if all are backstops."""
        contenders = tuple(m.id for m in self.official if m.role != "backstop")
        return contenders or tuple(m.id for m in self.official)

    @functools.cached_property
    def canary(self) -> ModelSpec | None:
        return next((m for m in self.models if m.role == "canary"), None)

    @functools.cached_property
    def _roles(self) -> dict[str, str]:
        roles: dict[str, str] = {}
        for m in self.models:
            roles.setdefault(m.id, m.role)  # the first listing of an id, as the loop below found it
        return roles

    @property
    def on_no_answer_output(self) -> Any:
        return json.loads(self.on_no_answer_json)

    def role_of(self, model_id: str) -> str:
        return self._roles.get(model_id, "unknown")

    def to_dict(self) -> dict[str, Any]:
        models = []
        for m in self.models:
            d: dict[str, Any] = {"id": m.id, "role": m.role}
            if m.wait_ms is not None:
                d["wait_ms"] = m.wait_ms
            if m.weight != 1.0:
                d["weight"] = m.weight
            models.append(d)
        return {
            "version": self.version,
            "deadline_ms": self.deadline_ms,
            "decide": self.decide,
            "models": models,
            "on_no_answer": {"output": self.on_no_answer_output},
            "late_window_ms": self.late_window_ms,
            "orphan_timeout_ms": self.orphan_timeout_ms,
            "dedupe_retention_ms": self.dedupe_retention_ms,
            "min_votes": self.min_votes,
            "threshold": self.threshold,
            **(
                {"bandit": {"prior": list(self.bandit.prior), "discount": self.bandit.discount}}
                if self.bandit is not None
                else {}
            ),
        }


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; errors name the file and the field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{p}: cannot read policy file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"{p}: not valid YAML: {e}") from None
    try:
        return parse_policy(data)
    except PolicyError as e:
        raise PolicyError(f"{p}: {e}") from None


def _int(data: Mapping[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    if name not in data:
        if default is None:
            raise PolicyError(f"{name}: required")
        return default
    v = data[name]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise PolicyError(f"{name}: must be an integer from {lo} to {hi}, got {v!r}")
    return v


def parse_policy(data: Any) -> Policy:
    """Validate a policy given as plain data (what YAML or JSON produced).

    >>> p = parse_policy({"version": 2, "deadline_ms": 100, "models": [{"id": "gbt", "role": "incumbent"}]})
    >>> p.decide, p.late_window_ms, [m.id for m in p.official]
    ('first_in_order', 1000, ['gbt'])
    >>> parse_policy({"version": 2, "deadline_ms": 100, "models": [{"id": "gbt", "role": "boss"}]})
    Traceback (most recent call last):
    ...
    udfs.policy.PolicyError: models[0].role: must be one of incumbent, challenger, backstop, canary, shadow, got 'boss'
    """
    if not isinstance(data, dict):
        raise PolicyError("policy: must be a mapping with version, deadline_ms, decide and models")
    unknown = sorted(set(map(str, data)) - _TOP_FIELDS)
    if unknown:
        raise PolicyError(f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(_TOP_FIELDS))})")
    version = _int(data, "version", 1, 2**31 - 1)
    deadline = _int(data, "deadline_ms", 1, MAX_DEADLINE_MS)
    decide = data.get("decide", "first_in_order")
    if decide not in DECIDE_MODES:
        raise PolicyError(f"decide: must be one of {', '.join(DECIDE_MODES)}, got {decide!r}")
    models = _parse_models(data.get("models"), deadline)
    on_no_answer = data.get("on_no_answer", {"output": None})
    if not isinstance(on_no_answer, dict) or set(on_no_answer) - {"output"}:
        raise PolicyError("on_no_answer: must be a mapping with one field, output")
    try:
        no_answer_json = json.dumps(on_no_answer.get("output"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"on_no_answer.output: must be JSON-serialisable: {e}") from None
    if on_no_answer.get("output") is not None:
        # It goes out as a result's output, so it must be null or a valid output object.
        try:
            check_output(on_no_answer["output"])
        except ValueError as e:
            raise PolicyError(f"on_no_answer.output: must be null or an output object: {e}") from None
    official = [m for m in models if m.official]
    min_votes = _int(data, "min_votes", 1, max(1, len(official)), 1)
    threshold = data.get("threshold", 0.5)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise PolicyError(f"threshold: must be a number in [0, 1], got {threshold!r}")
    bandit = _parse_bandit(data.get("bandit"), decide, "bandit" in data)
    return Policy(
        version=version,
        deadline_ms=deadline,
        decide=decide,
        models=models,
        on_no_answer_json=no_answer_json,
        late_window_ms=_int(data, "late_window_ms", 0, MAX_DEADLINE_MS, 1000),
        orphan_timeout_ms=_int(data, "orphan_timeout_ms", 1, 3_600_000, 10_000),
        dedupe_retention_ms=_int(data, "dedupe_retention_ms", 0, 7 * 86_400_000, 600_000),
        min_votes=min_votes,
        threshold=float(threshold),
        bandit=bandit,
    )


def _parse_bandit(raw: Any, decide: str, given: bool) -> BanditSpec | None:
    if decide != "thompson":
        if given:
            raise PolicyError(f"bandit: only with decide: thompson (decide is {decide})")
        return None
    if raw is None:
        return BanditSpec()
    if not isinstance(raw, dict):
        raise PolicyError("bandit: must be a mapping with prior and/or discount")
    unknown = sorted(set(map(str, raw)) - _BANDIT_FIELDS)
    if unknown:
        raise PolicyError(
            f"bandit.{unknown[0]}: unknown field (allowed: {', '.join(sorted(_BANDIT_FIELDS))})"
        )
    prior = raw.get("prior", [1.0, 1.0])
    if not isinstance(prior, list | tuple) or len(prior) != 2:
        raise PolicyError(
            f"bandit.prior: must be [alpha, beta], two numbers in (0, {MAX_WEIGHT:g}], got {prior!r}"
        )
    for i, x in enumerate(prior):
        if not isinstance(x, int | float) or isinstance(x, bool) or not 0 < x <= MAX_WEIGHT:
            raise PolicyError(f"bandit.prior[{i}]: must be a number in (0, {MAX_WEIGHT:g}], got {x!r}")
    discount = raw.get("discount", 1.0)
    if not isinstance(discount, int | float) or isinstance(discount, bool) or not 0.5 <= discount <= 1.0:
        raise PolicyError(f"bandit.discount: must be a number in [0.5, 1], got {discount!r}")
    return BanditSpec(float(prior[0]), float(prior[1]), float(discount))


def _parse_models(raw: Any, deadline: int) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise PolicyError("models: must be a non-empty list")
    if len(raw) > MAX_MODELS:
        raise PolicyError(f"models: at most {MAX_MODELS} models, got {len(raw)}")
    seen: set[str] = set()
    out = [_parse_model(m, f"models[{i}]", deadline, seen) for i, m in enumerate(raw)]
    if not any(m.official for m in out):
        raise PolicyError("models: needs at least one model with role incumbent, challenger or backstop")
    if sum(1 for m in out if m.role == "canary") > 1:
        raise PolicyError("models: at most one model may have role canary")
    if sum(1 for m in out if m.role == "incumbent") > 1:
        raise PolicyError("models: at most one model may have role incumbent")
    return tuple(out)


def _parse_model(m: Any, where: str, deadline: int, seen: set[str]) -> ModelSpec:
    """One entry of ``models`` (``where``: its place, for the message); adds its id to ``seen``, the ids
    of the entries before it."""
    if not isinstance(m, dict):
        raise PolicyError(f"{where}: must be a mapping with id and role")
    unknown = sorted(set(map(str, m)) - _MODEL_FIELDS)
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown field (allowed: id, role, wait_ms, weight)")
    mid = m.get("id")
    if not isinstance(mid, str) or not MODEL_ID_RE.match(mid):
        # The same rule as a score's model_id: any other id could never match a score.
        raise PolicyError(f"{where}.id: required, a string of 1-64 characters of [A-Za-z0-9._-]")
    if mid in seen:
        raise PolicyError(f"{where}.id: duplicate model id {mid!r}")
    seen.add(mid)
    role = m.get("role")
    if role not in ROLES:
        raise PolicyError(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
    wait = m.get("wait_ms")
    if wait is not None:
        if role not in OFFICIAL_ROLES:
            raise PolicyError(f"{where}.wait_ms: only models that can answer officially wait ({role})")
        if not isinstance(wait, int) or isinstance(wait, bool) or not 0 <= wait <= deadline:
            raise PolicyError(f"{where}.wait_ms: must be an integer from 0 to deadline_ms ({deadline})")
    weight = m.get("weight", 1.0)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not 0 < weight <= MAX_WEIGHT:
        raise PolicyError(f"{where}.weight: must be a number in (0, {MAX_WEIGHT:g}], got {weight!r}")
    return ModelSpec(mid, role, wait, float(weight))


# --- Decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreView:
    """What the policy needs to know of one model's (first) score in a mailbox."""

    ok: bool
    output: Mapping[str, Any] | None
    model_version: str


@dataclass(frozen=True)
class Decided:
    model_id: str | None
    model_version: str | None
    output: Any
    reason: str  # preferred | fallback | backstop | ensemble | no_answer
    trigger: str  # score | wait_timer | deadline | all_failed


@dataclass(frozen=True)
class Waiting:
    wake_at_ms: int


def decide(
    policy: Policy,
    scores: Mapping[str, ScoreView],
    received_at_ms: int,
    deadline_at_ms: int,
    now_ms: int,
    by_timer: bool,
    chosen: str | None = None,
) -> Decided | Waiting:
    """The official answer if it is already certain at ``now_ms``, else when to look again.

    ``chosen`` (``decide: thompson``): the model the bandit picked for this request when it arrived; it
    goes first, the rest follow in preference order (``first_in_order`` from there on). Without a
    choice (a mailbox from before the policy had a bandit, a replay) the preference order applies.

    >>> p = parse_policy({"version": 1, "deadline_ms": 100, "models": [
    ...     {"id": "gbt", "role": "incumbent", "wait_ms": 40}, {"id": "tree", "role": "backstop"}]})
    >>> tree = ScoreView(ok=True, output={"label": 0}, model_version="3")
    >>> decide(p, {"tree": tree}, 0, 100, now_ms=10, by_timer=False)  # gbt may still answer
    Waiting(wake_at_ms=40)
    >>> decide(p, {"tree": tree}, 0, 100, now_ms=40, by_timer=True)  # gbt's wait ran out
    Decided(model_id='tree', model_version='3', output={'label': 0}, reason='backstop', trigger='wait_timer')
    """
    if policy.decide == "first_in_order":
        return _first_in_order(policy, scores, received_at_ms, deadline_at_ms, now_ms, by_timer)
    if policy.decide == "thompson":
        order = policy.official
        if chosen is not None and any(m.id == chosen for m in order):
            order = tuple(m for m in order if m.id == chosen) + tuple(m for m in order if m.id != chosen)
        return _first_in_order(policy, scores, received_at_ms, deadline_at_ms, now_ms, by_timer, order)
    return _ensemble(policy, scores, received_at_ms, deadline_at_ms, now_ms, by_timer)


def _wait_until(m: ModelSpec, received_at_ms: int, deadline_at_ms: int) -> int:
    if m.wait_ms is None:
        return deadline_at_ms
    return min(received_at_ms + m.wait_ms, deadline_at_ms)


def _trigger(now_ms: int, deadline_at_ms: int, by_timer: bool) -> str:
    if now_ms >= deadline_at_ms:
        return "deadline"
    return "wait_timer" if by_timer else "score"


def _first_in_order(
    policy: Policy,
    scores: Mapping[str, ScoreView],
    received_at_ms: int,
    deadline_at_ms: int,
    now_ms: int,
    by_timer: bool,
    order: tuple[ModelSpec, ...] | None = None,
) -> Decided | Waiting:
    """The most preferred answer, once every model ahead of it answered, failed or ran out of wait."""
    official = policy.official if order is None else order
    for i, m in enumerate(official):
        s = scores.get(m.id)
        if s is not None and s.ok:
            reason = "backstop" if m.role == "backstop" else ("preferred" if i == 0 else "fallback")
            return Decided(
                m.id, s.model_version, s.output, reason, _trigger(now_ms, deadline_at_ms, by_timer)
            )
        if s is not None:  # failed: no point waiting for it
            continue
        until = _wait_until(m, received_at_ms, deadline_at_ms)
        if now_ms < until:
            return Waiting(until)
    if all(m.id in scores for m in official):  # every official model answered, and all failed
        return _no_answer(policy, "all_failed")
    if now_ms >= deadline_at_ms:
        return _no_answer(policy, "deadline")
    return Waiting(deadline_at_ms)


def _no_answer(policy: Policy, trigger: str) -> Decided:
    return Decided(None, None, policy.on_no_answer_output, "no_answer", trigger)


def _ensemble(
    policy: Policy,
    scores: Mapping[str, ScoreView],
    received_at_ms: int,
    deadline_at_ms: int,
    now_ms: int,
    by_timer: bool,
) -> Decided | Waiting:
    """Combine every official answer that came in time; wait for each model up to its wait_ms."""
    key = "label" if policy.decide == "majority_vote" else None
    usable: list[tuple[ModelSpec, Mapping[str, Any]]] = []
    pending_until: list[int] = []
    for m in policy.official:
        s = scores.get(m.id)
        if s is not None:
            if s.ok and s.output is not None and _usable(s.output, key):
                usable.append((m, s.output))
            continue
        until = _wait_until(m, received_at_ms, deadline_at_ms)
        if now_ms < until:
            pending_until.append(until)
    if pending_until:
        return Waiting(min(pending_until))
    if len(usable) >= policy.min_votes:
        output = _vote(usable) if key == "label" else _average(usable, policy.threshold)
        version = str(policy.version)
        return Decided("ensemble", version, output, "ensemble", _trigger(now_ms, deadline_at_ms, by_timer))
    if all(m.id in scores for m in policy.official):
        return _no_answer(policy, "all_failed")
    if now_ms >= deadline_at_ms:
        return _no_answer(policy, "deadline")
    return Waiting(deadline_at_ms)


def _usable(output: Mapping[str, Any], key: str | None) -> bool:
    if key is not None:
        return output.get(key) is not None
    return output.get("probability") is not None or output.get("value") is not None


def _vote(usable: list[tuple[ModelSpec, Mapping[str, Any]]]) -> dict[str, Any]:
    """Most common label; a tie goes to the label of the most preferred model among the tied."""
    labels = [out["label"] for _, out in usable]
    counts = Counter(_label_key(x) for x in labels)
    best = max(counts.values())
    label = next(x for x in labels if counts[_label_key(x)] == best)
    probs = [
        float(out["probability"])
        for _, out in usable
        if _label_key(out["label"]) == _label_key(label) and out.get("probability") is not None
    ]
    result: dict[str, Any] = {"label": label}
    if probs:
        result["probability"] = sum(probs) / len(probs)
    return result


def _label_key(label: Any) -> str:
    # 1, True and "1" are different labels; json text tells them apart.
    return json.dumps(label)


def _average(usable: list[tuple[ModelSpec, Mapping[str, Any]]], threshold: float) -> dict[str, Any]:
    """Weighted mean of probabilities (label by threshold) or, failing that, of values."""
    with_p = [
        (m.weight, float(out["probability"])) for m, out in usable if out.get("probability") is not None
    ]
    if with_p:
        total = sum(w for w, _ in with_p)
        p = sum(w * x for w, x in with_p) / total
        return {"label": int(p >= threshold), "probability": p}
    with_v = [(m.weight, float(out["value"])) for m, out in usable]
    total = sum(w for w, _ in with_v)
    return {"value": sum(w * x for w, x in with_v) / total}
