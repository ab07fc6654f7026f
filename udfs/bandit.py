"""Thompson sampling over the models that may answer, from label feedback. Pure Python, no pyflink.

Each model has a Beta(alpha, beta) posterior over "its answer is right"; to choose, draw once from
every eligible model's posterior and take the highest draw, so traffic goes to a model in proportion
to the chance that it is the best. A label is a reward of 1 (right) or 0 (wrong); fractional rewards
in [0, 1] are allowed. With ``discount`` < 1 every update first pulls all posteriors part of the way
back to the prior, so old evidence fades and a model that degrades loses traffic within roughly
1 / (1 - discount) labels instead of never.

In the rendezvous every model scores every request, so a label can update every model that answered,
not only the one chosen (``update`` once per answering model): far more evidence than a classic bandit.

The state is a small versioned JSON-serialisable dict (it can live in Flink ``ValueState`` as text, per
the project's rule of never pickling project classes); functions never mutate their input. The RNG is
passed in (``random.Random``), so a seeded run is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STATE_VERSION = 1
MAX_PSEUDO_COUNT = 1e12  # bounded, so a long-lived state can never overflow to inf


def new_state(
    models: Iterable[str] = (), prior: tuple[float, float] = (1.0, 1.0), discount: float = 1.0
) -> dict[str, Any]:
    """A fresh state: every listed model at the prior (models first seen later start there too).

    >>> new_state(["gbt"], prior=(2, 1))
    {'v': 1, 'prior': [2.0, 1.0], 'discount': 1.0, 'updates': 0, 'arms': {'gbt': [2.0, 1.0]}}
    """
    state = {
        "v": STATE_VERSION,
        "prior": [float(prior[0]), float(prior[1])],
        "discount": float(discount),
        "updates": 0,
        "arms": {m: [float(prior[0]), float(prior[1])] for m in models},
    }
    return check_state(state)


def _positive(v: Any, where: str) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or not v > 0:
        raise ValueError(f"{where}: must be a positive finite number, got {v!r}")
    return float(v)


def check_state(state: Any) -> dict[str, Any]:
    """The state if it is well-formed; else ValueError naming the field (e.g. a restore of a bad blob)."""
    if not isinstance(state, Mapping):
        raise ValueError("state: must be a mapping")
    if state.get("v") != STATE_VERSION:
        raise ValueError(f"state.v: version {state.get('v')!r} is not supported (expected {STATE_VERSION})")
    _pair(state.get("prior"), "state.prior")
    d = state.get("discount")
    if not isinstance(d, int | float) or isinstance(d, bool) or not 0.0 < d <= 1.0:
        raise ValueError(f"state.discount: must be a number in (0, 1], got {d!r}")
    n = state.get("updates")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"state.updates: must be a non-negative integer, got {n!r}")
    arms = state.get("arms")
    if not isinstance(arms, Mapping):
        raise ValueError("state.arms: must be a mapping of model id to [alpha, beta]")
    for mid, ab in arms.items():
        if not isinstance(mid, str) or not mid:
            raise ValueError(f"state.arms: model ids must be non-empty strings, got {mid!r}")
        _pair(ab, f"state.arms.{mid}")
    return dict(state)


def _pair(ab: Any, where: str) -> None:
    """[alpha, beta], both positive and finite (a prior, or one model's posterior)."""
    if not isinstance(ab, list | tuple) or len(ab) != 2:
        raise ValueError(f"{where}: must be [alpha, beta]")
    for i, x in enumerate(ab):
        _positive(x, f"{where}[{i}]")


def _arm(state: Mapping[str, Any], model_id: str) -> tuple[float, float]:
    ab = state["arms"].get(model_id)
    a, b = ab if ab is not None else state["prior"]
    return float(a), float(b)


def choose(state: Mapping[str, Any], eligible: Sequence[str], rng: random.Random) -> str:
    """One Thompson draw per eligible model (in the given order); the highest wins, ties to the first."""
    if not eligible:
        raise ValueError("eligible: needs at least one model")
    best, best_draw = eligible[0], -1.0
    for mid in eligible:
        a, b = _arm(state, mid)
        draw = rng.betavariate(a, b)
        if draw > best_draw:
            best, best_draw = mid, draw
    return best


def update(state: Mapping[str, Any], model_id: str, reward: float | bool) -> dict[str, Any]:
    """A new state with one label's evidence for model_id (1 or True: its answer was right)."""
    if not 0.0 <= float(reward) <= 1.0:
        raise ValueError(f"reward: must be in [0, 1], got {reward!r}")
    return update_many(state, {model_id: reward})


def update_many(state: Mapping[str, Any], rewards: Mapping[str, float | bool]) -> dict[str, Any]:
    """A new state with one label's evidence for several models (every model that answered the request).

    One label is one step of forgetting: the discount is applied once, then every reward is added, so a
    request scored by five models fades old evidence as much as one scored by one. ``updates`` counts
    labels. Models are applied in sorted order, so the result does not depend on the mapping's order.

    >>> state = update_many(new_state(), {"gbt": 1.0, "tree": 0.0})  # gbt was right, tree wrong
    >>> state["arms"], state["updates"]
    ({'gbt': [2.0, 1.0], 'tree': [1.0, 2.0]}, 1)
    >>> faded = update_many(new_state(discount=0.5), {"gbt": 1.0})
    >>> update_many(faded, {"tree": 1.0})["arms"]  # gbt's evidence halves, back towards the prior
    {'gbt': [1.5, 1.0], 'tree': [2.0, 1.0]}
    """
    checked = {m: float(r) for m, r in sorted(rewards.items())}
    for m, r in checked.items():
        if not isinstance(m, str) or not m:
            raise ValueError(f"rewards: model ids must be non-empty strings, got {m!r}")
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"rewards.{m}: must be in [0, 1], got {rewards[m]!r}")
    pa, pb = state["prior"]
    d = float(state["discount"])
    arms = {m: list(ab) for m, ab in state["arms"].items()}
    if d < 1.0:
        for ab in arms.values():
            ab[0] = pa + d * (ab[0] - pa)
            ab[1] = pb + d * (ab[1] - pb)
    for m, r in checked.items():
        a, b = arms.get(m, [pa, pb])
        arms[m] = [min(a + r, MAX_PSEUDO_COUNT), min(b + 1.0 - r, MAX_PSEUDO_COUNT)]
    return {**state, "updates": int(state["updates"]) + 1, "arms": arms}


def with_settings(state: Mapping[str, Any], prior: tuple[float, float], discount: float) -> dict[str, Any]:
    """The state under a (possibly changed) policy's prior and discount; the evidence is kept."""
    return check_state({**state, "prior": [float(prior[0]), float(prior[1])], "discount": float(discount)})


def request_rng(request_id: str, salt: str = "") -> random.Random:
    """A generator seeded by the request id (and a salt, e.g. the policy version): the same request
    draws the same numbers in every process and on every replay (no dependence on PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"thompson\0{salt}\0{request_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def choose_for_request(
    state: Mapping[str, Any], eligible: Sequence[str], request_id: str, salt: str = ""
) -> str:
    """``choose`` with the draw seeded by the request id: given the same posteriors, a replay of the
    request makes the same choice.

    >>> state = new_state(["gbt", "tree"])
    >>> choice = choose_for_request(state, ["gbt", "tree"], "r-1", salt="7")
    >>> choice in ("gbt", "tree") and choice == choose_for_request(state, ["gbt", "tree"], "r-1", salt="7")
    True
    """
    return choose(state, eligible, request_rng(request_id, salt))


def posterior_mean(state: Mapping[str, Any], model_id: str) -> float:
    """alpha / (alpha + beta): the chance the model's answer is right, as the state sees it.

    >>> posterior_mean(update_many(new_state(), {"gbt": 1.0}), "gbt")  # Beta(2, 1)
    0.6666666666666666
    >>> posterior_mean(new_state(), "never-seen")  # the prior's
    0.5
    """
    a, b = _arm(state, model_id)
    return a / (a + b)


def dumps(state: Mapping[str, Any]) -> str:
    """Compact JSON text for keyed state."""
    return json.dumps(check_state(state), separators=(",", ":"), sort_keys=True, allow_nan=False)


def loads(text: str) -> dict[str, Any]:
    """A state from ``dumps`` text, checked (an unknown version fails loudly, never silently resets)."""
    return check_state(json.loads(text))
