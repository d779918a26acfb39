"""Fault injection: which Track API requests fail, and how.

A :class:`FaultInjector` holds an ordered list of :class:`FaultRule` and an optional
:class:`RateLimit`. For each Track API request the server asks :meth:`FaultInjector.decide`,
which returns the :class:`Fault` to act out, or ``None`` to answer normally:

- rules are tried in order; a rule that matches the request (``method``, ``path`` prefix)
  fires with its ``probability`` (else the next rule is tried), and the first that fires
  decides. A fired rule spends one of its ``count`` (``None`` = unlimited); a spent rule is
  removed;
- otherwise, when a rate limit is set, a token bucket (``per_second`` tokens a second, at most
  ``burst`` stored, initially full) answers a ``rate_limit`` fault when it is empty.

Fault kinds (JSON ``kind``): ``status`` answers ``status`` (e.g. 500, 502, 503, 504);
``throttle`` answers 429, with a ``Retry-After: <retry_after>`` header when ``retry_after`` is
given; ``delay`` waits ``delay_seconds`` and then answers normally; ``drop`` closes the
connection without an answer. ``status``, ``throttle`` and ``drop`` also accept
``delay_seconds`` to wait first. A request that gets any fault other than ``delay`` applies
nothing.

Seeded: every probabilistic rule draws from a random source of its own, seeded by the rule's
``seed`` or else by the injector's (0 when none is given) and the rule's position, so a run
with the same rules and the same requests faults the same requests, and one rule's draws never
shift another's.

Pure: the clock and the seeds are injected, nothing sleeps here.

Failure semantics: :func:`parse_faults` raises ``ValueError`` naming the bad field for a rule
that cannot be used; the server answers it with 400 and the CLI exits with the message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

FaultKind: TypeAlias = Literal["status", "throttle", "delay", "drop", "rate_limit"]
RULE_KINDS: Final = ("status", "throttle", "delay", "drop")


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one request: wait ``delay_seconds``, then answer ``status`` (with
    ``retry_after`` as a ``Retry-After`` header when set), drop the connection, or (``delay``)
    go on normally."""

    kind: FaultKind
    status: int | None = None
    retry_after: int | None = None
    delay_seconds: float = 0.0


RATE_LIMITED: Final = Fault("rate_limit", status=429)


@dataclass(slots=True)
class FaultRule:
    """A fault for the next ``count`` matching requests (``None``: every one), each with
    ``probability``; ``method`` and ``path`` (a prefix) narrow what matches."""

    fault: Fault
    count: int | None = 1
    probability: float = 1.0
    method: str | None = None
    path: str | None = None
    seed: int | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to a request, budget and probability aside."""
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )

    def as_json(self) -> dict[str, Any]:
        """The rule in the JSON shape :func:`parse_faults` reads, with its remaining count."""
        rule: dict[str, Any] = {"kind": self.fault.kind, "count": self.count}
        if self.fault.status is not None and self.fault.kind == "status":
            rule["status"] = self.fault.status
        if self.fault.retry_after is not None:
            rule["retry_after"] = self.fault.retry_after
        if self.fault.delay_seconds:
            rule["delay_seconds"] = self.fault.delay_seconds
        if self.probability != 1.0:
            rule["probability"] = self.probability
        if self.seed is not None:
            rule["seed"] = self.seed
        if self.method is not None:
            rule["method"] = self.method
        if self.path is not None:
            rule["path"] = self.path
        return rule


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``per_second`` requests a second on average, in bursts of up to ``burst``
    (default: one second's worth, at least 1).

    Raises ``ValueError`` for a rate that is not positive or a burst below 1.
    """

    per_second: float
    burst: float | None = None

    def __post_init__(self) -> None:
        if not self.per_second > 0:
            raise ValueError("rate_limit per_second must be a positive number")
        if self.burst is not None and not self.burst >= 1:
            raise ValueError("rate_limit burst must be at least 1")

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds."""
        return max(1.0, self.per_second) if self.burst is None else self.burst

    def as_json(self) -> dict[str, Any]:
        """The limit in the JSON shape :func:`parse_faults` reads."""
        return {"kind": "rate_limit", "per_second": self.per_second, "burst": self.capacity}


class FaultInjector:
    """The rules and rate limit in force, consulted once per Track API request."""

    def __init__(
        self,
        rules: tuple[FaultRule, ...] | list[FaultRule] = (),
        limit: RateLimit | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rules: list[FaultRule] = []
        # Each probabilistic rule's own random source, by identity of the injector's copy.
        self._randoms: dict[int, random.Random] = {}
        self._seed = 0 if seed is None else seed
        self._added = 0
        self._limit: RateLimit | None = None
        self._tokens = 0.0
        self._refilled_at = 0.0
        self._clock = clock
        self.add(list(rules), limit)

    @property
    def rules(self) -> list[FaultRule]:
        """The rules still in force, in the order they are tried."""
        return list(self._rules)

    @property
    def limit(self) -> RateLimit | None:
        """The rate limit in force, if any."""
        return self._limit

    def add(self, rules: list[FaultRule], limit: RateLimit | None = None) -> None:
        """Append ``rules`` (copies, so their budgets are this injector's own), each
        probabilistic one with a random source seeded by its ``seed``, else by the injector's
        seed and the rule's position among all rules ever added; replace the rate limit when
        ``limit`` is given (its bucket starts full)."""
        for rule in rules:
            copy = FaultRule(
                rule.fault, rule.count, rule.probability, rule.method, rule.path, rule.seed
            )
            if copy.probability < 1.0:
                seed = rule.seed if rule.seed is not None else f"{self._seed}:{self._added}"
                # Faults for tests and benchmarks, not security: a seedable PRNG is right.
                self._randoms[id(copy)] = random.Random(seed)  # noqa: S311
            self._added += 1
            self._rules.append(copy)
        if limit is not None:
            self._limit = limit
            self._tokens = limit.capacity
            self._refilled_at = self._clock()

    def clear(self) -> None:
        """Remove every rule and the rate limit."""
        self._rules.clear()
        self._randoms.clear()
        self._limit = None

    def decide(self, method: str, path: str) -> Fault | None:
        """The fault for this request, spending budget (module docstring), or ``None``."""
        for index, rule in enumerate(self._rules):
            if not rule.matches(method, path):
                continue
            if rule.probability < 1.0 and self._randoms[id(rule)].random() >= rule.probability:
                continue
            if rule.count is not None:
                rule.count -= 1
                if rule.count == 0:
                    del self._rules[index]
                    self._randoms.pop(id(rule), None)
            return rule.fault
        return self._rate_limited()

    def as_json(self) -> dict[str, Any]:
        """The rules and rate limit in force, as ``GET /_emulator/faults`` shows them."""
        return {
            "rules": [rule.as_json() for rule in self._rules],
            "rate_limit": None if self._limit is None else self._limit.as_json(),
        }

    def _rate_limited(self) -> Fault | None:
        limit = self._limit
        if limit is None:
            return None
        now = self._clock()
        self._tokens = min(
            limit.capacity, self._tokens + (now - self._refilled_at) * limit.per_second
        )
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return RATE_LIMITED


def parse_faults(spec: Any) -> tuple[list[FaultRule], RateLimit | None]:
    """Rules and rate limit from JSON: one object or a list of them (see ``docs/emulator.md``).

    Raises ``ValueError`` naming the first field that is wrong.
    """
    entries = spec if type(spec) is list else [spec]
    rules: list[FaultRule] = []
    limit: RateLimit | None = None
    for position, entry in enumerate(entries):
        if type(entry) is not dict:
            raise ValueError(f"fault {position}: must be a JSON object")
        try:
            if entry.get("kind") == "rate_limit":
                limit = _parse_rate_limit(entry)
            else:
                rules.append(_parse_rule(entry))
        except ValueError as exc:
            raise ValueError(f"fault {position}: {exc}") from None
    return rules, limit


_RULE_FIELDS: Final = frozenset(
    {
        "kind",
        "status",
        "retry_after",
        "delay_seconds",
        "count",
        "probability",
        "method",
        "path",
        "seed",
    }
)


def _parse_rule(entry: dict[str, Any]) -> FaultRule:
    unknown = set(entry) - _RULE_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    kind = entry.get("kind")
    if kind not in RULE_KINDS:
        raise ValueError(f"kind must be one of {', '.join((*RULE_KINDS, 'rate_limit'))}")
    delay = _number(entry, "delay_seconds", 0.0)
    if delay < 0 or (kind == "delay" and delay == 0):
        raise ValueError("delay_seconds must be positive for a delay, never negative")
    status: int | None = None
    if kind == "status":
        status = entry.get("status")
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status, 400 to 599")
    elif kind == "throttle":
        status = 429
    elif "status" in entry:
        raise ValueError(f"status is not used by kind {kind}")
    retry_after = entry.get("retry_after")
    if retry_after is not None and (
        kind != "throttle" or type(retry_after) is not int or retry_after < 0
    ):
        raise ValueError("retry_after must be whole seconds, and only for kind throttle")
    probability = _number(entry, "probability", 1.0)
    if not 0 < probability <= 1:
        raise ValueError("probability must be in (0, 1]")
    count = entry.get("count", 1 if "probability" not in entry else None)
    if count is not None and (type(count) is not int or count < 1):
        raise ValueError("count must be a positive integer or null (unlimited)")
    method = entry.get("method")
    path = entry.get("path")
    if method is not None and type(method) is not str:
        raise ValueError("method must be a string")
    if path is not None and (type(path) is not str or not path.startswith("/")):
        raise ValueError("path must be a string starting with /")
    return FaultRule(
        fault=Fault(kind, status, retry_after, delay),
        count=count,
        probability=probability,
        method=None if method is None else method.upper(),
        path=path,
        seed=_seed(entry),
    )


def _seed(entry: dict[str, Any]) -> int | None:
    seed = entry.get("seed")
    if seed is not None and type(seed) is not int:
        raise ValueError("seed must be an integer")
    return seed


def _parse_rate_limit(entry: dict[str, Any]) -> RateLimit:
    unknown = set(entry) - {"kind", "per_second", "burst"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    burst = entry.get("burst")
    if burst is not None and type(burst) not in (int, float):
        raise ValueError("burst must be a number")
    return RateLimit(_number(entry, "per_second", 0.0), burst)


def _number(entry: dict[str, Any], key: str, default: float) -> float:
    value = entry.get(key, default)
    if type(value) not in (int, float):
        raise ValueError(f"{key} must be a number")
    return float(value)
