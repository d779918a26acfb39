"""``mpcio deadletter``: list, show and redrive the records of the dead-letter topic.

Reading never disturbs the worker: a plain consumer without a group is assigned every
partition, reads the committed records (``read_committed``: never those of a transaction the
broker aborted) from the beginning up to the end offsets captured when it started, and
commits nothing. Positions are ``PARTITION@OFFSET`` in the dead-letter topic. ``--since``
seeks each partition by time (Kafka's ``offsets_for_times`` on the records' timestamps, which
the producer sets when it writes the dead letter, after the failure) instead of reading the
topic from its beginning, then keeps the records whose ``failed_at`` is recent enough.
``--newest-first`` (:func:`newest_first`) orders by failure time across partitions, keeping
only ``--limit`` records in memory when a limit is given.

Redrive (:func:`plan_redrive`) sends a record back to where it can be processed again:
ingest-stage records (raw mParticle, audience or erasure JSON) to their ``source_topic`` with
their key; sink-stage records (one Customer.io item) wrapped in an ``operation_batch`` with one
operation to the operations topic, keyed by the dead letter's key. Redriven records carry the
dead letter's headers without its ``mpcio.*`` error context (so the source record's own
headers come back) plus ``mpcio.redriven.from`` (:mod:`app.records`). Records that
cannot be redriven are skipped with a reason: a corrupt stored state (``state_corrupt``: the
payload is the state, not an input), a ``tombstone`` (no value to send), a sink record whose
payload is not a Customer.io item, a record that is not a dead letter at all, and
(:func:`erased_since`) a record of a user the worker erased after the record's source time,
read from the ``erasures`` table's changelog (:func:`read_erasures`): a redrive never
recreates an erased person. An ingest record goes back with its original Kafka timestamp.

Privacy: texts shown to an operator (detail, key, payload, response) have email addresses,
secrets and URL credentials masked by the installed :class:`~app.masking.Masker` unless the
caller asks for them unmasked; a masked JSON payload is decoded, masked string by string and
re-encoded (compact), so escaped addresses are found too.

Failure semantics: a broker that cannot be used, or a missing dead-letter topic, raises
:class:`~app.errors.BrokerError`; a record that does not decode is yielded with ``error`` set
rather than stopping the listing.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from app import masking
from app.errors import BrokerError, InvalidRecordError, Reason
from app.logs import mask_mpid
from app.records import (
    Headers,
    SourcePosition,
    Stage,
    as_list,
    decode_dead_letter,
    operation_batch,
    redrive_headers,
)
from app.records import now_ms as wall_ms
from app.topics import ERASURES_TABLE, changelog_topic, rekey_kind

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping

    from aiokafka.structs import ConsumerRecord

    from app.settings import Settings

log = logging.getLogger(__name__)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
STALL_SECONDS = 30.0
#: How long a dead-letter read waits for a transaction open on a partition (a worker commits
#: every few seconds) before it ends that partition's reading there (:func:`read_topic`).
OPEN_TRANSACTION_WAIT_SECONDS = 10.0
#: How a redrive skip because of a later erasure starts (:func:`erased_since`).
ERASED_PREFIX = "erased:"
NOT_REDRIVABLE_REASONS = {
    Reason.STATE_CORRUPT: "the payload is a corrupt stored state, not input",
    Reason.TOMBSTONE: "a tombstone has no value to send back",
}


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A record of the dead-letter topic: ``PARTITION@OFFSET``."""

    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> Position:
        partition, sep, offset = text.strip().removeprefix("p").partition("@")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"not PARTITION@OFFSET: {text!r}")
        return cls(int(partition), int(offset))

    def __str__(self) -> str:
        return f"{self.partition}@{self.offset}"


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """One record of the dead-letter topic, decoded (``letter``) or not (``error``)."""

    position: Position
    timestamp_ms: int
    key: bytes | None
    letter: dict[str, Any] | None
    error: str | None = None
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command works on; empty fields select everything."""

    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since_ms: int | None = None
    positions: frozenset[Position] = frozenset()
    limit: int | None = None

    @property
    def everything(self) -> bool:
        return not (self.reasons or self.stages or self.positions) and self.since_ms is None

    def matches(self, stored: StoredLetter) -> bool:
        if self.positions and stored.position not in self.positions:
            return False
        letter = stored.letter
        if letter is None:  # undecodable records match only when nothing else is asked
            return not (self.reasons or self.stages or self.since_ms is not None)
        return (
            (not self.reasons or letter["reason"] in self.reasons)
            and (not self.stages or letter["stage"] in self.stages)
            and (self.since_ms is None or letter["failed_at_ms"] >= self.since_ms)
        )


def parse_since(text: str, now: datetime | None = None) -> int:
    """``--since``: ``30m``, ``2h``, ``7d``, ``1w`` ago, or an ISO date/time (UTC if naive)."""
    now = now or datetime.now(UTC)
    if match := _RELATIVE.match(text.strip().lower()):
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return int((now - delta).timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since wants 30m, 2h, 7d, 1w or an ISO date/time, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, to the second: ``2025-06-01T10:00:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_stored(
    position: Position,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None = None,
) -> StoredLetter:
    headers = headers or []
    try:
        letter = decode_dead_letter(value or b"")
    except InvalidRecordError as exc:
        return StoredLetter(position, timestamp_ms, key, None, exc.detail, headers)
    return StoredLetter(position, timestamp_ms, key, letter, headers=headers)


def truncation(letter: dict[str, Any]) -> str:
    """What an operator needs of a dead letter whose payload was cut to fit Kafka's record
    limit (``payload_bytes`` set, reason ``too_large``): how much is kept, and where the whole
    record is (its source topic keeps it for that topic's retention)."""
    source = f"{letter['source_topic']}[{_dash(letter['source_partition'])}]"
    return (
        f"payload truncated to {len(letter['payload'])} of {letter['payload_bytes']} bytes; "
        f"the whole record is at {source}@{_dash(letter['source_offset'])} while that topic "
        "keeps it"
    )


def list_line(stored: StoredLetter, *, masked: bool = True) -> str:
    """One line per dead letter: position, failed time, stage, reason, source, HTTP status."""
    letter = stored.letter
    if letter is None:
        when = iso_time(stored.timestamp_ms)
        return f"{stored.position!s:>9}  {when}  not a dead letter: {stored.error}"
    partition, offset = _dash(letter["source_partition"]), _dash(letter["source_offset"])
    source = f"{letter['source_topic']}[{partition}]@{offset}"
    detail = _text(letter["detail"], masked)
    if letter["payload_bytes"] is not None:
        detail = f"[TRUNCATED {len(letter['payload'])}/{letter['payload_bytes']} bytes] {detail}"
    if len(detail) > 100:
        detail = detail[:99] + "…"
    return (
        f"{stored.position!s:>9}  {iso_time(letter['failed_at_ms'])}  {letter['stage']:<6}  "
        f"{letter['reason']:<24}  {source}  http={_dash(letter['http_status'])}  {detail}"
    )


def show_document(stored: StoredLetter, *, masked: bool = True) -> dict[str, Any]:
    """The full record for ``show``: payload as UTF-8 text when it decodes, else base64."""
    document: dict[str, Any] = {
        "position": str(stored.position),
        "kafka_timestamp": iso_time(stored.timestamp_ms),
    }
    letter = stored.letter
    if letter is None:
        document["error"] = stored.error
        return document
    payload = letter["payload"]
    try:
        payload_text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload_text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    if masked:  # base64 would hide nothing: masked bytes that are not UTF-8 show as \xNN
        payload_text = masking.active().payload(payload)
        encoding = "utf-8" if encoding == "utf-8" else "text-with-escapes"
    document.update(
        {
            "reason": letter["reason"],
            "detail": _text(letter["detail"], masked),
            "stage": letter["stage"],
            "source_topic": letter["source_topic"],
            "source_partition": letter["source_partition"],
            "source_offset": letter["source_offset"],
            "key": _key_text(letter["key"], masked),
            "payload_encoding": encoding,
            "payload": payload_text,
            "payload_truncated": letter["payload_bytes"] is not None,
            "payload_bytes": len(payload),
            "original_payload_bytes": letter["payload_bytes"] or len(payload),
            "truncation": None if letter["payload_bytes"] is None else truncation(letter),
            "http_status": letter["http_status"],
            "response": None if letter["response"] is None else _text(letter["response"], masked),
            "attempts": letter["attempts"],
            "failed_at": iso_time(letter["failed_at_ms"]),
            "failed_at_ms": letter["failed_at_ms"],
            "emails_masked": masked,
        }
    )
    return document


@dataclass(frozen=True, slots=True)
class Redrive:
    """One record to send back: where, with which key, headers, Kafka time, and what."""

    position: Position
    topic: str
    key: bytes | None
    value: bytes
    what: str = field(default="")
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None  # Kafka time to send with (None: the time of the send)
    erases: bool = False  # an erasure request or a Customer.io delete: never held back


def erased_since(letter: Mapping[str, Any], erasures: Mapping[bytes, int]) -> str | None:
    """Why the dead letter ``letter`` must not be redriven because its user was erased after
    it, or None when it may be.

    ``erasures``: key (mpid bytes) → the user's last erasure time (ms), the worker's marker.
    The record's time is its ``source_ms`` (the Kafka time of the input record it came from,
    the time the worker's erasure check compares); when that is unknown (a dead letter written
    before the field existed) any erasure of the user forbids it: an erased person is never
    recreated on a guess. An unkeyed record names no user here: it goes back with its own
    timestamp and the worker checks each user's part (:func:`plan_redrive`)."""
    key = letter["key"]
    erased_ms = None if key is None else erasures.get(key)
    if erased_ms is None:
        return None
    source_ms = letter["source_ms"]
    if source_ms is not None and source_ms > erased_ms:
        return None
    when = "at an unknown time" if source_ms is None else f"at {iso_time(source_ms)}"
    return (
        f"{ERASED_PREFIX} the user was erased at {iso_time(erased_ms)}, after this record "
        f"({when}); it stays on the dead-letter topic"
    )


def plan_redrive(
    stored: StoredLetter,
    settings: Settings,
    now_ms: int | None = None,
    erasures: Mapping[bytes, int] | None = None,
) -> Redrive | str:
    """Where ``stored`` goes back to, or why it cannot be redriven (a string).

    ``erasures``: mpid (key bytes) → the time (ms) of the user's last erasure, as the worker
    keeps it (:func:`read_erasures`); a record of a user erased after it
    (:func:`erased_since`) is not redriven, unless it erases itself (an erasure request, a
    Customer.io delete). An ingest record goes back with its own Kafka timestamp
    (``source_ms``), so the worker also compares it with a later erasure as the record it was."""
    letter = stored.letter
    if letter is None:
        return f"not a dead letter ({stored.error})"
    reason = letter["reason"]
    if reason in NOT_REDRIVABLE_REASONS:
        return f"{reason}: {NOT_REDRIVABLE_REASONS[reason]}"
    if letter["payload_bytes"] is not None:
        return f"{reason}: {truncation(letter)}: it cannot be redriven"
    headers = redrive_headers(stored.headers, f"{settings.topic_deadletter}/{stored.position}")
    if letter["stage"] != Stage.SINK:
        planned: Redrive | str = Redrive(
            stored.position,
            letter["source_topic"],
            letter["key"],
            letter["payload"],
            f"{letter['stage']} record",
            headers,
            letter["source_ms"],
            erases=letter["source_topic"] == settings.topic_erasure
            or rekey_kind(stored.headers) == "erasure",
        )
    else:
        planned = _sink_redrive(stored, letter, settings, headers, now_ms)
    if isinstance(planned, str) or planned.erases:
        return planned
    return erased_since(letter, erasures or {}) or planned


def _sink_redrive(
    stored: StoredLetter,
    letter: dict[str, Any],
    settings: Settings,
    headers: Headers,
    now_ms: int | None,
) -> Redrive | str:
    """A sink dead letter (one Customer.io item) as a one-operation ``operation_batch`` for
    the operations topic, or why its payload cannot be one."""
    try:
        item = orjson.loads(letter["payload"])
    except orjson.JSONDecodeError:
        item = None
    identifiers = item.get("identifiers") if isinstance(item, dict) else None
    if not (isinstance(item, dict) and isinstance(item.get("action"), str) and identifiers):
        return f"{letter['reason']}: the payload is not a Customer.io item"
    key = letter["key"]
    mpid = key.decode("utf-8", "replace") if key else ""
    person = identifiers if isinstance(identifiers, dict) else {}
    value = operation_batch(
        mpid,
        [(item["action"], str(next(iter(person.values()), "")), letter["payload"])],
        SourcePosition(
            settings.topic_deadletter,
            stored.position.partition,
            stored.position.offset,
            timestamp_ms=letter["source_ms"],
        ),
        now_ms if now_ms is not None else wall_ms(),
    )
    return Redrive(
        stored.position,
        settings.topic_operations,
        key,
        value,
        f"Customer.io {item['action']}",
        headers,
        erases=item["action"] == "delete",
    )


async def read_dead_letters(
    settings: Settings,
    positions: frozenset[Position] = frozenset(),
    since_ms: int | None = None,
) -> AsyncGenerator[StoredLetter, None]:
    """Every record of the dead-letter topic present when called, in offset order within each
    partition (only the partitions and offsets from ``positions`` when given; only records
    written at or after ``since_ms``, ms since the epoch, when given)."""
    import contextlib  # noqa: PLC0415

    reader = read_topic(settings, settings.topic_deadletter, positions, since_ms)
    async with contextlib.aclosing(reader) as records:
        async for record in records:
            yield decode_stored(
                Position(record.partition, record.offset),
                record.timestamp,
                record.key,
                record.value,
                as_list(record.headers),
            )


async def read_erasures(settings: Settings) -> dict[bytes, int]:
    """The worker's erasure markers: mpid (key bytes) → the time (ms) of the user's last
    erasure, read from the ``erasures`` table's changelog (compacted; a tombstone removes a
    key); empty when that topic does not exist (no worker of this app id ever ran, so none
    erased anyone). A value that is not decimal text raises :class:`~app.errors.BrokerError`
    (the markers cannot be trusted, so nothing may be redriven)."""
    import contextlib  # noqa: PLC0415

    markers: dict[bytes, int] = {}
    topic = changelog_topic(settings.app_id, ERASURES_TABLE)
    reader = read_topic(settings, topic, missing_ok=True)
    async with contextlib.aclosing(reader) as records:
        async for record in records:
            if record.key is None:
                continue
            if record.value is None:
                markers.pop(record.key, None)
                continue
            try:
                markers[record.key] = int(record.value)
            except ValueError:
                raise BrokerError(
                    f"{topic}[{record.partition}]@{record.offset} is not an erasure time"
                ) from None
    return markers


async def read_topic(
    settings: Settings,
    topic: str,
    positions: frozenset[Position] = frozenset(),
    since_ms: int | None = None,
    *,
    missing_ok: bool = False,
) -> AsyncGenerator[ConsumerRecord[bytes, bytes], None]:
    """Every committed record of ``topic`` present when called (see :func:`read_dead_letters`
    for ``positions`` and ``since_ms``), read without a group and committing nothing. A missing
    topic raises :class:`~app.errors.BrokerError`, or yields nothing with ``missing_ok``.

    Read ``read_committed``: under ``exactly_once`` a worker that crashed mid-transaction left
    dead letters (and erasure markers) the broker aborted; the next owner wrote them again, so
    reading them too would list, and redrive, those records twice. Each partition is read up
    to its high-water mark when called, so a transaction still open then (a worker commits
    every few seconds) is waited for; one that stays open longer than
    :data:`OPEN_TRANSACTION_WAIT_SECONDS` (a worker killed mid-transaction: the broker aborts it
    after its transaction timeout) ends that partition's reading at its last stable offset with
    one WARNING naming the partition and offsets not read (run again later)."""
    consumer = await _started_reader(
        settings, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    try:
        tps = await _partitions(consumer, settings, topic, positions, missing_ok=missing_ok)
        if not tps:
            return
        consumer.assign(tps)
        by_time = (
            None
            if since_ms is None
            else await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        )
        begins, ends = _bounds(
            await consumer.beginning_offsets(tps),
            await _high_watermarks(settings, tps),
            positions,
            by_time,
        )
        for tp, start in begins.items():
            consumer.seek(tp, start)
        remaining = {tp for tp in tps if begins[tp] < ends[tp]}
        reached = dict(begins)
        last_progress = time.monotonic()
        while remaining:
            fetched = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    last_progress = time.monotonic()
                    yield record
            for tp in list(remaining):
                position = await consumer.position(tp)
                if position > reached[tp]:  # skipped aborted records and markers move it too
                    reached[tp] = position
                    last_progress = time.monotonic()
                if position >= ends[tp]:
                    remaining.discard(tp)
            if remaining and time.monotonic() - last_progress > OPEN_TRANSACTION_WAIT_SECONDS:
                remaining -= _held_by_open_transactions(consumer, topic, remaining, reached, ends)
            if remaining and time.monotonic() - last_progress > STALL_SECONDS:
                raise BrokerError(
                    f"reading {topic} stalled for {STALL_SECONDS:.0f}s at {settings.broker}"
                )
    finally:
        await consumer.stop()


async def _partitions(
    consumer: Any,
    settings: Settings,
    topic: str,
    positions: frozenset[Position],
    *,
    missing_ok: bool,
) -> list[Any]:
    """The partitions of ``topic`` to read (those of ``positions``, or all); a missing topic
    raises :class:`~app.errors.BrokerError`, or gives none with ``missing_ok``."""
    from aiokafka import TopicPartition  # noqa: PLC0415 - heavy import

    # the consumer's own cluster view only knows assigned topics: ask for all of them
    cluster = await consumer._client.fetch_all_metadata()
    if topic not in cluster.topics() and not missing_ok:
        raise BrokerError(f"topic {topic} does not exist at {settings.broker}")
    wanted = {pos.partition for pos in positions}
    return [
        TopicPartition(topic, p)
        for p in sorted(cluster.partitions_for_topic(topic) or ())  # None: missing
        if not wanted or p in wanted
    ]


async def _started_reader(settings: Settings, **options: Any) -> Any:
    """A started consumer without a group that commits nothing (the tools never disturb the
    worker's offsets), with the deployment's TLS/SASL settings and aiokafka ``options``."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415 - heavy import

    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **options,
        **client_kwargs(settings),
    )
    await start_client(consumer, settings)
    return consumer


async def _high_watermarks(settings: Settings, tps: list[Any]) -> dict[Any, int]:
    """Each partition's high-water mark (the end including records of open transactions),
    which a ``read_committed`` consumer's ``end_offsets`` does not give (it answers the last
    stable offset): asked by a short-lived ``read_uncommitted`` consumer."""
    asker = await _started_reader(settings)
    try:
        ends: dict[Any, int] = await asker.end_offsets(tps)
    finally:
        await asker.stop()
    return ends


def _held_by_open_transactions(
    consumer: Any, topic: str, remaining: set[Any], reached: dict[Any, int], ends: dict[Any, int]
) -> set[Any]:
    """The partitions of ``remaining`` read up to their last stable offset (as of the last
    fetch), so only a transaction still open keeps the rest (up to ``ends``) from being read:
    one WARNING each, naming the offsets not read (no record content)."""
    held = set()
    for tp in sorted(remaining):
        stable = consumer.last_stable_offset(tp)
        if stable is not None and stable >= 0 and reached[tp] >= stable:
            log.warning(
                "%s[%d]: offsets %d..%d are in a transaction still open after %.0fs (a worker "
                "stopped mid-transaction? the broker aborts it after its transaction timeout): "
                "not read; run again later",
                topic,
                tp.partition,
                reached[tp],
                ends[tp] - 1,
                OPEN_TRANSACTION_WAIT_SECONDS,
            )
            held.add(tp)
    return held


def _bounds(
    begins: dict[Any, int],
    ends: dict[Any, int],
    positions: frozenset[Position],
    by_time: dict[Any, Any] | None = None,
) -> tuple[dict[Any, int], dict[Any, int]]:
    """Where to start and stop reading each partition: all of it, or around ``positions``,
    and not before the first record of ``by_time`` (``offsets_for_times``' answer)."""
    starts, stops = dict(begins), dict(ends)
    for tp, begin in begins.items():
        wanted = [pos.offset for pos in positions if pos.partition == tp.partition]
        if wanted:
            starts[tp] = max(begin, min(wanted))
            stops[tp] = min(ends[tp], max(wanted) + 1)
    for tp, found in (by_time or {}).items():  # None: no record that recent in tp
        starts[tp] = max(starts[tp], stops[tp] if found is None else found.offset)
    return starts, stops


async def select(settings: Settings, selection: Selection) -> AsyncGenerator[StoredLetter, None]:
    """The dead letters ``selection`` picks, up to its limit."""
    import contextlib  # noqa: PLC0415

    count = 0
    if selection.limit is not None and selection.limit <= 0:
        return
    reader = read_dead_letters(settings, selection.positions, selection.since_ms)
    async with contextlib.aclosing(reader) as letters:
        async for stored in letters:
            if not selection.matches(stored):
                continue
            yield stored
            count += 1
            if selection.limit is not None and count >= selection.limit:
                return


async def newest_first(
    settings: Settings, selection: Selection
) -> AsyncGenerator[StoredLetter, None]:
    """The dead letters ``selection`` picks, most recent failure first (Kafka time for records
    that do not decode), up to its limit; only ``limit`` records are held at a time."""
    import contextlib  # noqa: PLC0415

    def when(stored: StoredLetter) -> tuple[int, Position]:
        failed = stored.letter["failed_at_ms"] if stored.letter else stored.timestamp_ms
        return failed, stored.position

    everything = dataclasses.replace(selection, limit=None)
    # (time, position) is unique per record, so StoredLetter itself is never compared
    kept: list[tuple[tuple[int, Position], StoredLetter]] = []
    async with contextlib.aclosing(select(settings, everything)) as letters:
        async for stored in letters:
            entry = (when(stored), stored)
            if selection.limit is None or len(kept) < selection.limit:
                heapq.heappush(kept, entry)
            else:
                heapq.heappushpop(kept, entry)  # drops the oldest of limit + 1
    for _, stored in sorted(kept, key=lambda entry: entry[0], reverse=True):
        yield stored


class RedriveCounts(NamedTuple):
    """What a redrive did: records sent (or that would be, dry run), records skipped, and how
    many of the skipped ones were skipped because their user was erased after them."""

    sent: int
    skipped: int
    erased: int


async def redrive(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool,
    report: Any,
    masked: bool = True,
) -> RedriveCounts:
    """Send the selected dead letters back (see :func:`plan_redrive`); ``report(line)`` says
    what happens to each (a skipped one by position, key and why; the key of an erased user
    masked like an mpid in the logs unless ``masked`` is false). With ``dry_run`` nothing is
    sent.

    The erasure markers are read after the selection, just before the sends: an erasure the
    worker applies after that read is not seen here (an ingest record still meets it in the
    worker, which compares the record's own timestamp; a sink item sent before the erasure's
    deletes is deleted by them)."""
    import contextlib  # noqa: PLC0415

    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    from app.kafka_security import client_kwargs, start_client  # noqa: PLC0415

    async with contextlib.aclosing(select(settings, selection)) as letters:
        selected = [stored async for stored in letters]
    erasures = await read_erasures(settings) if selected else {}
    plans: list[Redrive] = []
    skipped = erased = 0
    for stored in selected:
        plan = plan_redrive(stored, settings, erasures=erasures)
        if isinstance(plan, str):
            skipped += 1
            key = stored.letter["key"] if stored.letter else stored.key
            if plan.startswith(ERASED_PREFIX):  # an erased person: not even the mpid in clear
                erased += 1
                shown = mask_mpid(key) if masked else _key_text(key, masked=False)
            else:
                shown = _key_text(key, masked)
            report(f"skip {stored.position} key={shown}: {_text(plan, masked)}")
            continue
        plans.append(plan)
    verb = "would send" if dry_run else "send"
    for plan in plans:
        report(
            f"{verb} {plan.position} → {plan.topic} key={_key_text(plan.key, masked)} "
            f"({plan.what}, {len(plan.value)} bytes)"
        )
    counts = RedriveCounts(len(plans), skipped, erased)
    if dry_run or not plans:
        return counts
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", **client_kwargs(settings)
    )
    await start_client(producer, settings)
    try:
        existing = (await producer.client.fetch_all_metadata()).topics()
        missing = sorted({p.topic for p in plans} - existing)
        if missing:
            raise BrokerError(f"nothing sent: topic(s) {', '.join(missing)} do not exist")
        futures = [
            await producer.send(
                p.topic, p.value, key=p.key, headers=p.headers, timestamp_ms=p.timestamp_ms
            )
            for p in plans
        ]
        await producer.flush()
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            raise BrokerError(f"Kafka did not accept {len(failed)} redriven records: {failed[0]}")
    finally:
        await producer.stop()
    return counts


def _text(text: str, masked: bool) -> str:
    return masking.active().text(text) if masked else text


def _key_text(key: bytes | None, masked: bool) -> str | None:
    if key is None:
        return None
    try:
        return _text(key.decode("utf-8"), masked)
    except UnicodeDecodeError:
        if masked:
            return masking.active().text(key.decode("utf-8", "backslashreplace"))
        return "base64:" + base64.b64encode(key).decode("ascii")


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
