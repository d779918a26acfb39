"""Replay: keys, validation exactly as the worker's, gzip detection, batching, pacing, progress."""

from __future__ import annotations

import gzip
import io
from typing import TYPE_CHECKING

import pytest

from app.errors import InvalidRecordError, ReplayInputError, ReplayStoppedError
from app.ops.replay import (
    Flushed,
    ReplaySource,
    format_progress,
    record_key,
    replay_lines,
)

if TYPE_CHECKING:
    from pathlib import Path


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.flushed_at: list[int] = []

    async def send(self, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))

    async def flush(self) -> Flushed:
        before = self.flushed_at[-1] if self.flushed_at else 0
        self.flushed_at.append(len(self.sent))
        return Flushed(len(self.sent) - before)


class BrokerLostSender(FakeSender):
    """Acknowledges the first ``alive`` records; later flushes fail like a lost broker."""

    def __init__(self, alive: int) -> None:
        super().__init__()
        self.alive = alive

    async def flush(self) -> Flushed:
        before = self.flushed_at[-1] if self.flushed_at else 0
        self.flushed_at.append(len(self.sent))
        acked = max(0, min(len(self.sent), self.alive) - before)
        lost = len(self.sent) - before - acked
        return Flushed(
            acked, f"Kafka did not acknowledge {lost} record(s): timed out" if lost else None
        )


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b'{"mpid": 123}', b"123"),
        (b'{"mpid": "-9223372036854775808"}', b"-9223372036854775808"),
        (b'{"mpid": 9007199254740993}', b"9007199254740993"),  # never through a float
        (b'[{"mpid": "7"}, {"mpid": 8}]', b"7"),  # bulk: the first batch's mpid
    ],
)
def test_key_is_the_canonical_mpid(value: bytes, key: bytes) -> None:
    assert record_key(value) == key


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "invalid_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (b'"text"', "not_an_object"),
        (b"[1]", "not_an_object"),
        (b"[]", "empty_record"),
        (b'{"events": []}', "mpid_missing"),
        (b'{"mpid": 1.5}', "mpid_invalid"),
        (b'{"mpid": 1, "events": {}}', "events_not_a_list"),
    ],
)
def test_invalid_records_are_what_the_worker_rejects(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        record_key(value)
    assert caught.value.reason == reason


async def test_bad_lines_are_reported_by_number_and_skipped() -> None:
    lines = [
        b'{"mpid": 1}\n',
        b"\n",
        b'{"mpid": "ann@example.com"}\n',
        b"not json\n",
        b'[{"mpid": 2}, {"mpid": 3}]\n',
    ]
    sender, errors = FakeSender(), io.StringIO()
    summary = await replay_lines(lines, sender, errors, flush_every=1000)
    assert sender.sent == [(b"1", b'{"mpid": 1}'), (b"2", b'[{"mpid": 2}, {"mpid": 3}]')]
    assert (summary.lines, summary.sent, summary.invalid) == (4, 2, 2)
    report = errors.getvalue().splitlines()
    assert [line.split(":")[0] for line in report] == ["line 3", "line 4"]
    assert report[0].startswith("line 3: mpid_invalid: ")
    assert "ann@example.com" not in errors.getvalue()  # details are redacted
    assert sender.flushed_at == [2]  # flushed once, at the end


@pytest.mark.parametrize(
    ("max_invalid", "sent", "invalid", "stopped"),
    [(None, 3, 2, False), (2, 3, 2, False), (1, 2, 2, True), (0, 1, 1, True)],
)
async def test_max_invalid_stops_at_the_next_invalid_line(
    max_invalid: int | None, sent: int, invalid: int, stopped: bool
) -> None:
    lines = [b'{"mpid": 1}', b"bad", b'{"mpid": 2}', b"bad", b'{"mpid": 3}']
    sender = FakeSender()
    summary = await replay_lines(lines, sender, io.StringIO(), max_invalid=max_invalid)
    assert (summary.sent, summary.invalid, summary.stopped) == (sent, invalid, stopped)
    assert len(sender.sent) == sent
    assert sender.flushed_at == [sent]  # what was sent is flushed even when stopped


async def test_flushes_periodically_not_per_record() -> None:
    sender = FakeSender()
    lines = [b'{"mpid": %d}' % i for i in range(1, 11)]  # mpid 0 is no user
    await replay_lines(lines, sender, io.StringIO(), flush_every=4)
    assert sender.flushed_at == [4, 8, 10]


async def test_dry_run_validates_without_sending() -> None:
    summary = await replay_lines([b'{"mpid": 1}', b"x"], None, io.StringIO())
    assert (summary.sent, summary.invalid) == (1, 1)


async def test_rate_limit_paces_records() -> None:
    ticks = iter(i * 0.001 for i in range(10_000))
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    await replay_lines(
        [b'{"mpid": 1}'] * 5,
        FakeSender(),
        io.StringIO(),
        rate=10,
        clock=lambda: next(ticks),
        sleep=fake_sleep,
    )
    # record i may go at start + i/10 s; the fake clock barely moves, so each waits ~i/10 s
    assert len(slept) == 4
    assert slept == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.01)


def test_gzip_is_detected_by_magic_bytes_and_read(tmp_path: Path) -> None:
    path = tmp_path / "batches.data"
    path.write_bytes(gzip.compress(b'{"mpid": 1}\n{"mpid": 2}\n'))
    source = ReplaySource(str(path))
    try:
        assert source.compressed
        assert list(source.lines()) == [b'{"mpid": 1}\n', b'{"mpid": 2}\n']
        assert source.fraction() == 1.0
    finally:
        source.close()


def test_plain_file_progress_fraction_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    path.write_bytes(b'{"mpid": 1}\n')
    source = ReplaySource(str(path))
    assert not source.compressed
    assert source.fraction() == 0.0
    source.close()
    stdin = io.BufferedReader(io.BytesIO(gzip.compress(b'{"mpid": 3}\n')))  # type: ignore[arg-type]
    piped = ReplaySource("-", stdin=stdin)
    assert piped.compressed
    assert piped.fraction() is None  # unknown size: no ETA
    assert list(piped.lines()) == [b'{"mpid": 3}\n']


def test_unreadable_and_broken_gzip_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayInputError, match="cannot read"):
        ReplaySource(str(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"mpid": 1}\n' * 1000)[:60])
    source = ReplaySource(str(broken))
    with pytest.raises(ReplayInputError, match="cannot read"):
        list(source.lines())
    source.close()


def test_progress_shows_count_rate_percent_and_eta() -> None:
    assert format_progress(10_000, 2.0, 0.25) == ("replay: 10,000 sent  5,000/s  25%  ETA 0:00:06")
    assert format_progress(10_000, 2.0, None) == "replay: 10,000 sent  5,000/s"


async def test_a_lost_broker_stops_the_replay_and_counts_only_acknowledged_records() -> None:
    lines = [b'{"mpid": %d}' % n for n in range(1, 26)]
    sender = BrokerLostSender(alive=7)
    with pytest.raises(ReplayStoppedError) as caught:
        await replay_lines(lines, sender, io.StringIO(), flush_every=5)
    assert str(caught.value) == "Kafka did not acknowledge 3 record(s): timed out"
    assert caught.value.summary.sent == 7  # not the 10 handed over
    assert sender.flushed_at == [5, 10, 10]  # stopped at the failed flush; the rest not read
