"""``mpcio replay``: backfill or replay mParticle batches from a JSON Lines file into Kafka.

Each line is one record exactly as mParticle's Kafka output writes it: one batch object, or a
bulk array of batches. Lines are validated with the worker's own parser
(:func:`app.core.mparticle.parse_record`), so replay accepts exactly what the worker's batches
agent accepts (it writes to the batches topic only, and validates an erasure request or an
audience feed line as a batch: one without a top-level mpid is refused as ``mpid_missing``;
``mpcio dry-run`` tells those kinds apart), and
each record is keyed by its batch's mpid as canonical decimal text (a bulk array by its first
batch's mpid), so a user's records land on the partition the worker expects. The input may be
gzip-compressed (detected by its magic bytes or a ``.gz`` name).

Records are handed to the producer without waiting for each one; the producer is flushed (and
every delivery checked) every :data:`FLUSH_EVERY` records and at the end, which keeps replay
at tens of thousands of records per second on a local broker. The summary counts as sent only
the records Kafka acknowledged.

Failure semantics: an invalid line (not JSON, not an object or array of objects, no usable
mpid, ...) is reported on ``errors`` as ``line N: <reason>: <detail>`` (emails masked) and
skipped; with ``max_invalid`` (``--max-invalid N``) the replay stops at the (N+1)th invalid
line, after flushing what was sent, and ``ReplaySummary.stopped`` says so (the CLI exits 1).
A file that cannot be read raises :class:`ReplayInputError` (after flushing what was already
sent). When Kafka stops accepting records (a broker lost mid-replay), the records in flight
are flushed and counted, then one :class:`ReplayStoppedError` says why, carrying the summary
of what was acknowledged; every delivery outcome is read, so no "exception was never
retrieved" warning is printed for the records that failed.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from app import masking
from app.core.mparticle import parse_record
from app.errors import (
    BrokerError,
    InvalidRecordError,
    ReplayInputError,
    ReplayStoppedError,
    is_kafka_error,
    plain_kafka_error,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

    from app.settings import Settings

GZIP_MAGIC = b"\x1f\x8b"
FLUSH_EVERY = 20_000
PROGRESS_INTERVAL_SECONDS = 1.0


@dataclass(slots=True)
class ReplaySummary:
    lines: int = 0  # non-blank lines read
    sent: int = 0  # records Kafka acknowledged (in a dry run: that would be sent)
    invalid: int = 0
    seconds: float = 0.0
    stopped: bool = False  # more than max_invalid invalid lines: the rest was not read

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def record_key(value: bytes) -> bytes:
    """The Kafka key of one record: the (first) batch's mpid as canonical decimal text.

    Raises :class:`~app.errors.InvalidRecordError` for anything the worker would reject
    (an empty bulk array included: ``empty_record``).
    """
    return parse_record(value)[0].mpid.encode("ascii")


class ReplaySource:
    """The lines of a file (or ``-`` = stdin), gunzipped when the data is gzip."""

    def __init__(self, path: str, stdin: BinaryIO | None = None) -> None:
        self.name = "stdin" if path == "-" else path
        self._size: int | None = None
        raw: Any
        try:
            if path == "-":
                raw = stdin if stdin is not None else sys.stdin.buffer
            else:
                raw = Path(path).open("rb")  # noqa: SIM115 - closed by close()
                if Path(path).is_file():
                    self._size = Path(path).stat().st_size or None
            head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        except OSError as exc:
            raise ReplayInputError(f"cannot read {self.name}: {exc.strerror or exc}") from None
        self._raw = raw
        self.compressed = head == GZIP_MAGIC or path.endswith(".gz")
        self._stream: Any = gzip.GzipFile(fileobj=raw) if self.compressed else raw

    def fraction(self) -> float | None:
        """How much of the file was read (by bytes of the file itself), if its size is known."""
        if self._size is None:
            return None
        try:
            return min(float(self._raw.tell()) / self._size, 1.0)
        except (OSError, ValueError):
            return None

    def lines(self) -> Iterator[bytes]:
        """The lines, in order; a read error becomes :class:`ReplayInputError`."""
        try:
            yield from self._stream
        except (OSError, EOFError, zlib.error) as exc:
            raise ReplayInputError(f"cannot read {self.name}: {exc}") from None

    def close(self) -> None:
        if self._stream is not self._raw:
            self._stream.close()
        if self.name != "stdin":
            self._raw.close()


@dataclass(frozen=True, slots=True)
class Flushed:
    """What one flush confirmed: records acknowledged, and why others were not (None: all)."""

    acknowledged: int
    error: str | None = None


class Sender(Protocol):
    async def send(self, key: bytes, value: bytes) -> None: ...

    async def flush(self) -> Flushed: ...


class KafkaSender:
    """Sends without awaiting each delivery; :meth:`flush` waits for them all and counts."""

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._pending: list[asyncio.Future[Any]] = []

    async def send(self, key: bytes, value: bytes) -> None:
        """Hand one record to the producer; :class:`BrokerError` if it refuses it."""
        try:
            future = await self.producer.send(self.topic, value, key=key)
        except Exception as exc:
            if not is_kafka_error(exc):
                raise
            raise BrokerError(
                f"Kafka stopped taking records for {self.topic}: {plain_kafka_error(exc)}"
            ) from None
        future.add_done_callback(_outcome_read)
        self._pending.append(future)

    async def flush(self) -> Flushed:
        """Wait until every record sent since the last flush is acknowledged or failed."""
        pending, self._pending = self._pending, []
        await self.producer.flush()
        failed = [f.exception() for f in pending if not f.done() or f.exception() is not None]
        if not failed:
            return Flushed(len(pending))
        first = failed[0]
        reason = "no answer" if first is None else plain_kafka_error(first)
        return Flushed(
            len(pending) - len(failed),
            f"Kafka did not acknowledge {len(failed):,} record(s) for {self.topic}: {reason}",
        )


def _outcome_read(future: asyncio.Future[Any]) -> None:
    """Marks a failed delivery's exception as read: :meth:`KafkaSender.flush` reports the
    failures as one error, so asyncio must not print one warning per record."""
    if not future.cancelled():
        future.exception()


class Progress:
    """A progress line on ``out``: count, rate and (when the size is known) percent and ETA.

    On a terminal the line is rewritten in place; otherwise one line per interval.
    """

    def __init__(
        self,
        out: IO[str],
        fraction: Callable[[], float | None],
        *,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        verb: str = "sent",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.fraction = fraction
        self.interval = interval
        self.verb = verb
        self.clock = clock
        self.started = clock()
        self._next = self.started + interval
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._drawn = False

    def tick(self, count: int) -> None:
        now = self.clock()
        if now >= self._next:
            self._next = now + self.interval
            self.show(count, now)

    def show(self, count: int, now: float | None = None) -> None:
        elapsed = (now if now is not None else self.clock()) - self.started
        line = format_progress(count, elapsed, self.fraction(), self.verb)
        if self._tty:
            self.out.write(f"\r\x1b[K{line}")
            self._drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self._drawn = False


def format_progress(count: int, elapsed: float, fraction: float | None, verb: str = "sent") -> str:
    """``replay: 120,000 sent  24,310/s  45%  ETA 0:00:05`` (no percent or ETA if unknown)."""
    rate = count / elapsed if elapsed > 0 else 0.0
    line = f"replay: {count:,} {verb}  {rate:,.0f}/s"
    if fraction is not None and fraction > 0:
        remaining = elapsed * (1 - fraction) / fraction
        line += f"  {fraction:.0%}  ETA {_clock_text(remaining)}"
    return line


def _clock_text(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


async def replay_lines(
    lines: Iterable[bytes],
    sender: Sender | None,
    errors: IO[str],
    *,
    rate: float | None = None,
    max_invalid: int | None = None,
    progress: Progress | None = None,
    flush_every: int = FLUSH_EVERY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplaySummary:
    """Validate, key and send every line (``sender`` None: validate only, a dry run).

    ``rate`` caps records per second; more than ``max_invalid`` invalid lines stop the replay
    (``stopped``). Whatever was sent is flushed before this returns or raises;
    ``summary.sent`` counts the records the sender acknowledged. When the sender fails,
    raises :class:`ReplayStoppedError` (with that summary) after the flush.
    """
    summary = ReplaySummary()
    started = clock()
    handed = 0  # records given to the sender; acknowledged ones are counted at each flush
    failure: str | None = None
    try:
        try:
            for number, line in enumerate(lines, start=1):
                value = line.strip()
                if not value or (key := _checked_key(number, value, summary, errors)) is None:
                    if max_invalid is not None and summary.invalid > max_invalid:
                        summary.stopped = True
                        break
                    continue
                await _pace(started + handed / rate - clock() if rate else 0.0, sleep)
                handed += 1
                if sender is not None:
                    await sender.send(key, value)
                    if handed % flush_every == 0 and (error := await _flush(sender, summary)):
                        raise BrokerError(error)
                if progress is not None:
                    progress.tick(handed)
        finally:
            failure = None if sender is None else await _flush(sender, summary)
    except BrokerError as exc:
        failure = failure or str(exc)
    finally:
        if sender is None:  # a dry run: every valid record would be sent
            summary.sent = handed
        summary.seconds = clock() - started
        if progress is not None:
            progress.done()
    if failure is not None:
        raise ReplayStoppedError(failure, summary)
    return summary


async def _pace(ahead: float, sleep: Callable[[float], Awaitable[None]]) -> None:
    """Wait ``ahead`` seconds when ahead of ``--rate`` (pacing, not synchronisation)."""
    if ahead > 0:
        await sleep(ahead)


def _checked_key(
    number: int, value: bytes, summary: ReplaySummary, errors: IO[str]
) -> bytes | None:
    """The record's key, or None after reporting line ``number`` as invalid on ``errors``."""
    summary.lines += 1
    try:
        return record_key(value)
    except InvalidRecordError as exc:
        summary.invalid += 1
        errors.write(f"line {number}: {exc.reason}: {masking.active().text(exc.detail)}\n")
        return None


async def _flush(sender: Sender, summary: ReplaySummary) -> str | None:
    """Flush, count the acknowledged records; why some were not (None: all were)."""
    flushed = await sender.flush()
    summary.sent += flushed.acknowledged
    return flushed.error


async def replay_file(
    settings: Settings,
    path: str,
    *,
    topic: str | None = None,
    rate: float | None = None,
    max_invalid: int | None = None,
    dry_run: bool = False,
    errors: IO[str] = sys.stderr,
    progress_interval: float = PROGRESS_INTERVAL_SECONDS,
) -> ReplaySummary:
    """``mpcio replay``: the file into ``topic`` (default: the batches topic)."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - heavy import

    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415

    target = topic or settings.topic_batches
    source = ReplaySource(path)
    try:
        progress = Progress(
            errors,
            source.fraction,
            interval=progress_interval,
            verb="valid" if dry_run else "sent",
        )
        if dry_run:
            return await replay_lines(
                source.lines(),
                None,
                errors,
                rate=rate,
                max_invalid=max_invalid,
                progress=progress,
            )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            linger_ms=20,
            max_batch_size=512 * 1024,
            request_timeout_ms=30_000,
            **client_kwargs(settings),
        )
        await start_client(producer, settings)
        try:
            metadata = await producer.client.fetch_all_metadata()
            if target not in metadata.topics():
                raise BrokerError(f"topic {target} does not exist at {settings.broker}")
            progress.started = time.monotonic()
            return await replay_lines(
                source.lines(),
                KafkaSender(producer, target),
                errors,
                rate=rate,
                max_invalid=max_invalid,
                progress=progress,
            )
        finally:
            await producer.stop()
    finally:
        source.close()
