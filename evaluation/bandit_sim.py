"""How Thompson sampling (``udfs.bandit``) would route traffic, against fixed policies, in simulation.

Models have known accuracies (the chance their answer is right); one of them can degrade mid-run.
Every policy sees the same sequence of right/wrong outcomes (common random numbers), so differences
are the policies', not the dice's. Regret is expected regret: at each step, the best accuracy on offer
minus the accuracy of the model chosen, summed.

Policies: ``incumbent`` (always the initial incumbent), ``uniform`` (a random model), ``oracle`` (the
model that is truly best at that step: zero regret by definition), ``thompson`` (bandit feedback: only
the chosen model's label is used) and ``thompson_all`` (every model's label is used, which the
rendezvous allows because every model answers every request).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from udfs import bandit

POLICIES = ("incumbent", "uniform", "oracle", "thompson", "thompson_all")


@dataclass(frozen=True)
class SimConfig:
    accuracies: Mapping[str, float] = field(
        default_factory=lambda: {"gbt": 0.92, "logreg": 0.88, "tree": 0.80}
    )
    incumbent: str = "gbt"
    steps: int = 10_000
    degrade_model: str | None = "gbt"
    degrade_at: int = 5_000
    degraded_accuracy: float = 0.70
    discount: float = 0.999  # for Thompson sampling: evidence half-life ~ 700 labels
    label_delay: int = 0  # labels arrive this many requests later
    seed: int = 7

    def __post_init__(self) -> None:  # noqa: C901 - one check per field, in field order
        if not self.accuracies:
            raise ValueError("accuracies: needs at least one model")
        for m, a in self.accuracies.items():
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"accuracies.{m}: must be in [0, 1], got {a!r}")
        if self.incumbent not in self.accuracies:
            raise ValueError(f"incumbent: {self.incumbent!r} is not one of the models")
        if self.degrade_model is not None and self.degrade_model not in self.accuracies:
            raise ValueError(f"degrade_model: {self.degrade_model!r} is not one of the models")
        if self.steps < 1:
            raise ValueError(f"steps: must be positive, got {self.steps}")
        if not 0 <= self.degrade_at <= self.steps:
            raise ValueError(f"degrade_at: must be in [0, steps], got {self.degrade_at}")
        if not 0.0 <= self.degraded_accuracy <= 1.0:
            raise ValueError(f"degraded_accuracy: must be in [0, 1], got {self.degraded_accuracy}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount: must be in (0, 1], got {self.discount}")
        if self.label_delay < 0:
            raise ValueError(f"label_delay: must be >= 0, got {self.label_delay}")

    def accuracy(self, model: str, step: int) -> float:
        if model == self.degrade_model and step >= self.degrade_at:
            return self.degraded_accuracy
        return self.accuracies[model]


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    steps: int
    regret: float  # cumulative expected regret
    correct: int  # realised right answers
    share_before: dict[str, float]  # traffic share per model before the degradation
    share_after: dict[str, float]  # ... and after it
    share_last_quarter: dict[str, float]  # the last 25% of steps: where traffic settled
    regret_curve: list[float]  # cumulative regret at every 1% of the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "regret": round(self.regret, 3),
            "correct": self.correct,
            "accuracy": round(self.correct / self.steps, 4),
            "share_before": self.share_before,
            "share_after": self.share_after,
            "share_last_quarter": self.share_last_quarter,
            "regret_curve": [round(x, 3) for x in self.regret_curve],
        }


def _shares(counts: Counter[str], models: list[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {m: round(counts[m] / total, 4) if total else 0.0 for m in models}


def simulate(config: SimConfig | None = None) -> dict[str, PolicyResult]:
    """Run every policy over the same outcomes; results keyed by policy name (see POLICIES)."""
    cfg = config or SimConfig()
    models = list(cfg.accuracies)
    dice = random.Random(cfg.seed)
    # outcome[t][m]: whether model m's answer at step t is right (the same for every policy).
    uniforms = [[dice.random() for _ in models] for _ in range(cfg.steps)]

    def correct(t: int, m: str) -> bool:
        return uniforms[t][models.index(m)] < cfg.accuracy(m, t)

    choosers: dict[str, Callable[[int], str]] = {}
    rng_uniform = random.Random(cfg.seed + 1)
    choosers["incumbent"] = lambda t: cfg.incumbent
    choosers["uniform"] = lambda t: rng_uniform.choice(models)
    choosers["oracle"] = lambda t: max(models, key=lambda m: cfg.accuracy(m, t))
    results = {}
    for name in POLICIES:
        if name.startswith("thompson"):
            results[name] = _run_thompson(
                cfg, models, correct, all_feedback=name == "thompson_all", name=name
            )
        else:
            results[name] = _run_fixed(cfg, models, correct, choosers[name], name)
    return results


def _record(
    cfg: SimConfig,
    models: list[str],
    name: str,
    picks: list[str],
    right: int,
) -> PolicyResult:
    regret = 0.0
    curve = []
    every = max(1, cfg.steps // 100)
    for t, m in enumerate(picks):
        best = max(cfg.accuracy(x, t) for x in models)
        regret += best - cfg.accuracy(m, t)
        if (t + 1) % every == 0:
            curve.append(regret)
    split = cfg.degrade_at if cfg.degrade_model is not None else cfg.steps
    return PolicyResult(
        name,
        cfg.steps,
        regret,
        right,
        _shares(Counter(picks[:split]), models),
        _shares(Counter(picks[split:]), models),
        _shares(Counter(picks[cfg.steps - cfg.steps // 4 :]), models),
        curve,
    )


def _run_fixed(
    cfg: SimConfig,
    models: list[str],
    correct: Callable[[int, str], bool],
    chooser: Callable[[int], str],
    name: str,
) -> PolicyResult:
    picks = [chooser(t) for t in range(cfg.steps)]
    right = sum(correct(t, m) for t, m in enumerate(picks))
    return _record(cfg, models, name, picks, right)


def _run_thompson(
    cfg: SimConfig, models: list[str], correct: Callable[[int, str], bool], all_feedback: bool, name: str
) -> PolicyResult:
    rng = random.Random(cfg.seed + 2)
    state = bandit.new_state(models, discount=cfg.discount)
    pending: deque[tuple[int, tuple[str, ...]]] = deque()  # (request step, models judged): labels not yet in
    picks = []
    right = 0
    for t in range(cfg.steps):
        while pending and pending[0][0] + cfg.label_delay <= t:
            step, judged = pending.popleft()
            # One label per request, as the job applies it (udfs.feedback -> bandit.update_many): every
            # judged model's reward at once, one step of forgetting.
            state = bandit.update_many(state, {x: correct(step, x) for x in judged})
        m = bandit.choose(state, models, rng)
        picks.append(m)
        right += correct(t, m)
        pending.append((t, tuple(models) if all_feedback else (m,)))
    return _record(cfg, models, name, picks, right)
