"""Emulator fault rules, rate limit and request log: parsing, budgets, token bucket, counters."""

from __future__ import annotations

from typing import Any

import pytest

from app.dev.emulator.faults import (
    RATE_LIMITED,
    Fault,
    FaultInjector,
    FaultRule,
    RateLimit,
    parse_faults,
)
from app.dev.emulator.recording import RequestLog, RequestRecord


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"kind": "status", "status": 503, "count": 3}, FaultRule(Fault("status", 503), count=3)),
        ({"kind": "throttle"}, FaultRule(Fault("throttle", 429))),
        ({"kind": "throttle", "retry_after": 2}, FaultRule(Fault("throttle", 429, retry_after=2))),
        ({"kind": "delay", "delay_seconds": 1.5}, FaultRule(Fault("delay", delay_seconds=1.5))),
        ({"kind": "drop", "count": None}, FaultRule(Fault("drop"), count=None)),
        ({"kind": "status", "status": 500, "probability": 0.25},
         FaultRule(Fault("status", 500), count=None, probability=0.25)),
        ({"kind": "status", "status": 502, "probability": 0.5, "count": 2},
         FaultRule(Fault("status", 502), count=2, probability=0.5)),
        ({"kind": "drop", "delay_seconds": 2, "method": "post", "path": "/api/v2/batch"},
         FaultRule(Fault("drop", delay_seconds=2.0), method="POST", path="/api/v2/batch")),
    ],
)  # fmt: skip
def test_parse_rule(spec: dict[str, Any], expected: FaultRule) -> None:
    assert parse_faults(spec) == ([expected], None)


def test_parse_list_with_rate_limit() -> None:
    rules, limit = parse_faults(
        [{"kind": "drop"}, {"kind": "rate_limit", "per_second": 50}, {"kind": "throttle"}]
    )
    assert [rule.fault.kind for rule in rules] == ["drop", "throttle"]
    assert limit == RateLimit(50.0)
    assert limit.capacity == 50.0
    assert parse_faults({"kind": "rate_limit", "per_second": 0.5, "burst": 3})[1] == RateLimit(
        0.5, 3
    )
    assert RateLimit(0.5).capacity == 1.0


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("drop", "must be a JSON object"),
        ({"kind": "explode"}, "kind must be one of"),
        ({"kind": "status"}, "status must be an HTTP error status"),
        ({"kind": "status", "status": 200}, "status must be an HTTP error status"),
        ({"kind": "drop", "status": 500}, "status is not used"),
        ({"kind": "delay"}, "delay_seconds must be positive"),
        ({"kind": "drop", "delay_seconds": -1}, "delay_seconds must be positive"),
        ({"kind": "delay", "delay_seconds": "1"}, "delay_seconds must be a number"),
        ({"kind": "status", "status": 503, "retry_after": 2}, "retry_after"),
        ({"kind": "throttle", "retry_after": 1.5}, "retry_after"),
        ({"kind": "drop", "count": 0}, "count must be a positive integer"),
        ({"kind": "drop", "probability": 0}, "probability must be in"),
        ({"kind": "drop", "probability": 1.5}, "probability must be in"),
        ({"kind": "drop", "path": "api"}, "path must be a string starting with /"),
        ({"kind": "drop", "method": 1}, "method must be a string"),
        ({"kind": "drop", "cout": 2}, "unknown field(s) cout"),
        ({"kind": "rate_limit"}, "per_second must be a positive number"),
        ({"kind": "rate_limit", "per_second": 5, "burst": 0.5}, "burst must be at least 1"),
        ({"kind": "rate_limit", "per_second": 5, "rate": 1}, "unknown field(s) rate"),
        ([{"kind": "drop"}, {"kind": "nope"}], "fault 1:"),
    ],
)
def test_parse_refuses_bad_rules(spec: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="fault") as caught:
        parse_faults(spec)
    assert fragment in str(caught.value)


def test_rule_budget_is_spent_in_order_and_spent_rules_go() -> None:
    injector = FaultInjector(
        parse_faults([{"kind": "status", "status": 503, "count": 2}, {"kind": "drop"}])[0]
    )
    kinds = [getattr(injector.decide("POST", "/api/v2/batch"), "kind", None) for _ in range(5)]
    assert kinds == ["status", "status", "drop", None, None]
    assert injector.rules == []


def test_injector_copies_rules_so_a_config_is_never_spent() -> None:
    rules, _ = parse_faults({"kind": "drop", "count": 1})
    injector = FaultInjector(rules)
    injector.decide("POST", "/auth")
    assert rules[0].count == 1
    assert FaultInjector(rules).decide("POST", "/auth") == Fault("drop")


def test_rules_match_method_and_path_prefix() -> None:
    rules, _ = parse_faults({"kind": "drop", "count": None, "method": "POST", "path": "/api/v2"})
    injector = FaultInjector(rules)
    assert injector.decide("GET", "/api/v2/batch") is None
    assert injector.decide("POST", "/api/v1/customers/1/events") is None
    assert injector.decide("POST", "/api/v2/entity") == Fault("drop")
    assert injector.decide("POST", "/api/v2/batch") == Fault("drop")


def test_probability_is_seeded_and_near_its_rate() -> None:
    rules, _ = parse_faults({"kind": "status", "status": 500, "probability": 0.3})
    injector, again = FaultInjector(rules, seed=7), FaultInjector(rules, seed=7)
    draws = [injector.decide("POST", "/") is not None for _ in range(2000)]
    assert draws == [again.decide("POST", "/") is not None for _ in range(2000)]
    assert 450 < sum(draws) < 750


def test_a_rule_that_does_not_fire_lets_the_next_one_try() -> None:
    rules, _ = parse_faults(
        [{"kind": "drop", "probability": 0.000001}, {"kind": "throttle", "count": None}]
    )
    injector = FaultInjector(rules, seed=1)
    assert injector.decide("POST", "/") == Fault("throttle", 429)


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock()
    injector = FaultInjector(limit=RateLimit(per_second=2, burst=3), clock=clock)
    assert [injector.decide("POST", "/") for _ in range(4)] == [None, None, None, RATE_LIMITED]
    clock.now += 0.25
    assert injector.decide("POST", "/") == RATE_LIMITED
    clock.now += 0.25  # one token refilled in 0.5 s at 2/s
    assert injector.decide("POST", "/") is None
    assert injector.decide("POST", "/") == RATE_LIMITED
    clock.now += 60  # refills to the burst, not beyond
    assert [injector.decide("POST", "/") for _ in range(4)] == [None, None, None, RATE_LIMITED]


def test_rules_win_over_the_rate_limit_and_clear_removes_both() -> None:
    clock = FakeClock()
    injector = FaultInjector(
        parse_faults({"kind": "drop"})[0], RateLimit(per_second=1, burst=1), clock=clock
    )
    assert injector.decide("POST", "/") == Fault("drop")
    assert injector.decide("POST", "/") is None
    assert injector.decide("POST", "/") == RATE_LIMITED
    injector.add(parse_faults({"kind": "drop"})[0])
    injector.clear()
    assert injector.decide("POST", "/") is None
    assert injector.as_json() == {"rules": [], "rate_limit": None}


def test_as_json_round_trips_through_parse() -> None:
    spec = [
        {"kind": "status", "status": 503, "count": 2, "delay_seconds": 0.5},
        {"kind": "throttle", "retry_after": 3, "count": None, "probability": 0.5},
        {"kind": "drop", "count": 1, "method": "POST", "path": "/api/v2/batch"},
    ]
    rules, limit = parse_faults([*spec, {"kind": "rate_limit", "per_second": 10, "burst": 20}])
    shown = FaultInjector(rules, limit).as_json()
    assert shown["rules"] == spec
    assert shown["rate_limit"] == {"kind": "rate_limit", "per_second": 10, "burst": 20}
    assert parse_faults(shown["rules"])[0] == rules


def record(status: int | None, items: int = 1, fault: str | None = None) -> RequestRecord:
    return RequestRecord("POST", "/api/v2/batch", None, status, items, 10, 0.0, 0.001, fault)


def test_request_log_is_bounded_but_counters_are_exact() -> None:
    log = RequestLog(limit=3)
    for status in (200, 200, 207, 503, None):
        log.finished(record(status, fault="drop" if status is None else None))
    assert [r.status for r in log.records] == [207, 503, None]
    assert (log.requests, log.items_received, log.bytes_received) == (5, 5, 50)
    assert log.by_status == {"200": 2, "207": 1, "503": 1, "dropped": 1}
    assert log.faults == {"drop": 1}


@pytest.mark.parametrize(
    ("arrivals", "busiest"),
    [
        ([], 0),
        ([0.0], 1),
        ([0.0, 0.1, 0.2, 1.15, 1.19, 1.3], 3),
        ([0.0, 0.5, 0.99, 1.0, 1.01, 1.5], 4),
        ([float(n) for n in range(10)], 1),
        ([n / 64 for n in range(200)], 64),  # binary fractions: exact window edges
    ],
)
def test_busiest_second_is_the_largest_one_second_window(
    arrivals: list[float], busiest: int
) -> None:
    log = RequestLog()
    for at in arrivals:
        log.arrived(at)
    assert log.max_requests_per_second == busiest


def test_a_rule_with_its_own_seed_faults_the_same_requests_whatever_else_is_configured() -> None:
    seeded = {"kind": "status", "status": 503, "probability": 0.5, "seed": 21, "path": "/api"}
    other = {"kind": "throttle", "probability": 0.5, "path": "/other"}
    alone = FaultInjector(parse_faults(seeded)[0], seed=1)
    crowded = FaultInjector(parse_faults([other, seeded])[0], seed=99)
    pattern = [alone.decide("POST", "/api/v2/batch") is not None for _ in range(200)]
    for _ in range(200):  # the other rule draws too, from its own source
        crowded.decide("POST", "/other")
    assert [crowded.decide("POST", "/api/v2/batch") is not None for _ in range(200)] == pattern
    assert 60 < sum(pattern) < 140


def test_unseeded_probabilistic_rules_repeat_from_run_to_run() -> None:
    spec = [{"kind": "drop", "probability": 0.5}, {"kind": "throttle", "probability": 0.5}]
    runs = [FaultInjector(parse_faults(spec)[0]) for _ in range(2)]
    first, second = ([run.decide("POST", "/") for _ in range(100)] for run in runs)
    assert first == second
    assert {None, Fault("drop"), Fault("throttle", 429)} == set(first)


def test_seed_is_shown_and_must_be_an_integer() -> None:
    rules, _ = parse_faults({"kind": "drop", "probability": 0.5, "seed": 3})
    assert FaultInjector(rules).as_json()["rules"][0]["seed"] == 3
    with pytest.raises(ValueError, match="fault 0: seed must be an integer"):
        parse_faults({"kind": "drop", "probability": 0.5, "seed": "3"})
