"""check-config's checks against the in-process Customer.io emulator and an absent broker."""

from __future__ import annotations

import pytest

from app.dev.emulator.server import EmulatorConfig, running_emulator
from app.ops.checks import (
    Check,
    check_customerio,
    check_kafka,
    key_form,
    newest_shares,
    summary,
)
from app.settings import load_settings


def _settings(url: str, key: str = "good-key", **more: object) -> object:
    return load_settings(
        customerio_site_id="site",
        customerio_api_key=key,
        customerio_url=url,
        **more,
    )


async def test_customerio_check_accepts_good_and_rejects_bad_credentials() -> None:
    async with running_emulator(EmulatorConfig(site_id="site", api_key="good-key")) as emulator:
        good = await check_customerio(_settings(emulator.url))  # type: ignore[arg-type]
        bad = await check_customerio(_settings(emulator.url, "bad-key"))  # type: ignore[arg-type]
    assert good.ok
    assert good.line().startswith("customerio:")
    assert " ok (GET " in good.line()
    assert not bad.ok
    assert "answered 401" in bad.detail
    assert "MPCIO_CUSTOMERIO_API_KEY" in bad.detail
    assert "bad-key" not in bad.line()
    assert "FAILED: " in bad.line()


async def test_customerio_check_is_skipped_when_forwarding_is_off() -> None:
    check = await check_customerio(load_settings(forwarding_enabled=False))
    assert check.skipped
    assert not check.failed
    assert check.line() == "customerio:        skipped (MPCIO_FORWARDING_ENABLED is false)"


async def test_customerio_unreachable_is_a_failure() -> None:
    check = await check_customerio(_settings("http://127.0.0.1:1"))  # type: ignore[arg-type]
    assert not check.ok
    assert check.detail.startswith("cannot reach http://127.0.0.1:1: connection")


async def test_kafka_checks_fail_clearly_without_a_broker() -> None:
    checks = await check_kafka(
        load_settings(forwarding_enabled=False, broker="kafka://127.0.0.1:1")
    )
    assert [(c.name, c.failed, c.skipped) for c in checks] == [
        ("kafka", True, False),
        ("topics", False, True),
        ("co-partitioning", False, True),
    ]
    assert "connection refused" in checks[0].detail
    assert checks[1].line() == "topics:            skipped (no broker)"
    assert summary(checks) == "FAILED: kafka (skipped: topics, co-partitioning)"
    assert summary(checks[1:]) == "all checks passed (skipped: topics, co-partitioning)"


def test_check_lines_have_a_clear_verdict() -> None:
    assert Check("kafka", True, "1 broker").line() == "kafka:             ok (1 broker)"
    assert Check("topics", False, "missing x").line() == "topics:            FAILED: missing x"


@pytest.mark.parametrize(
    ("key", "value", "form"),
    [
        (b"42", b'{"mpid": 42, "events": []}', "mpid"),
        (b"-42", b'{"mpid": "-42", "events": []}', "mpid"),
        (None, b'{"mpid": 42, "events": []}', "none"),  # mParticle: no user id -> no key
        (b"+42", b'{"mpid": 42, "events": []}', "other"),
        (b"42 ", b'{"mpid": 42, "events": []}', "other"),
        (b"7", b'{"mpid": 42, "events": []}', "other"),
        (b"42", b'[{"mpid": 42, "events": []}, {"mpid": 43, "events": []}]', "other"),
        (b"42", b"{not json", "unparseable"),
        (None, None, "unparseable"),  # a tombstone
        (b"42", b"[]", "unparseable"),  # an empty bulk array is dead-lettered (empty_record)
    ],
)
def test_key_form(key: bytes | None, value: bytes | None, form: str) -> None:
    assert key_form(key, value) == form


@pytest.mark.parametrize(
    ("available", "count", "shares"),
    [
        ({0: 50, 1: 50}, 10, {0: 5, 1: 5}),
        ({0: 50, 1: 50, 2: 50}, 10, {0: 4, 1: 3, 2: 3}),  # never more than asked
        ({0: 2, 1: 40, 2: 48}, 90, {0: 2, 1: 40, 2: 48}),  # the verifier's uneven topic: all 90
        ({0: 2, 1: 40, 2: 48}, 60, {0: 2, 1: 29, 2: 29}),  # a short partition's rest goes on
        ({0: 0, 1: 7}, 5, {0: 0, 1: 5}),
        ({0: 3, 1: 4}, 100, {0: 3, 1: 4}),  # fewer when the topic holds fewer
        ({0: 9}, 0, {0: 0}),
    ],
)
def test_newest_shares_reads_count_records_when_the_topic_holds_them(
    available: dict[int, int], count: int, shares: dict[int, int]
) -> None:
    assert newest_shares(available, count) == shares
    assert sum(shares.values()) == min(count, sum(available.values()))
