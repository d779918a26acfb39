"""Parse mParticle event batches (SPEC §2) into the few typed values the mapping needs.

One Kafka record holds one batch (a JSON object) or several (a JSON array of objects, the bulk
form). :func:`parse_record` returns the batches in order, already normalised:

- ``mpid``, ``batch_id`` and ``event_id`` become canonical signed 64-bit decimal strings whether
  they arrived as JSON integers or decimal strings; they never pass through a float.
  (``session_id`` is not used by the mapping, so it is not read.)
- ``user_identities`` may be the outbound array of ``{identity_type, identity}``, the inbound
  object map, or null/absent; only ``customer_id`` and ``email`` are kept. An email identity
  that is not an address (``N/A``, ``none``, a typo without ``@``; :mod:`app.core.emails`) is no
  email: it is counted in ``Batch.ignored`` as ``email_invalid`` and the batch has no email.
- reserved ``$`` user attributes are matched case-insensitively and their aliases merged: keys
  are canonicalised to ``$`` + lower case (``$FirstName`` → ``$firstname``, ``$Zipcode`` →
  ``$zip``, ``$MobileNumber`` → ``$mobile``); custom keys keep their exact names.
- only events the mapping uses are kept (``custom_event``, ``screen_view``, ``opt_out`` and the
  install signals ``first_run`` / ``application_state_transition`` with ``is_first_run``), but
  the time range of *all* valid events is kept for first-seen bookkeeping.

Failure semantics. A whole record is rejected with :class:`~app.errors.InvalidRecordError`
(reason slugs: ``invalid_utf8``, ``invalid_json``, ``too_deep``, ``empty_record``,
``not_an_object``, ``events_not_a_list``, ``identities_invalid``, ``mpid_missing``,
``mpid_invalid``, ``environment_invalid``) when it cannot be used at all (``too_deep``: JSON
nested beyond orjson's 1,024 levels, or an event's custom attributes beyond
:data:`MAX_DATA_DEPTH`; ``empty_record``: an empty bulk array); in the bulk form one bad batch
rejects the record, so the dead letter holds exactly what arrived. A bad event is dropped and
counted in ``Batch.invalid_events`` by reason (``event_not_object``, ``event_type_missing``,
``data_not_object``, ``event_name_missing``, ``screen_name_missing``, ``opt_out_flag_missing``);
names that are blank after trimming count as missing, which also enforces Customer.io's "event
name not blank".
Anything else unusable is ignored and counted in ``Batch.ignored`` (see the ``IGNORED_*``
names) or, for event types, in ``Batch.ignored_events``. Nothing is logged here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, NoReturn, TypeAlias

import orjson

from app.core.emails import is_email_address
from app.errors import InvalidRecordError, Reason

Scalar: TypeAlias = str | int | float | bool
AttributeValue: TypeAlias = Scalar | list[Scalar] | None
EventKind: TypeAlias = Literal["custom_event", "screen_view", "opt_out", "install"]

UNKNOWN_DEVICE_TYPE: Final = "Unknown"
DEFAULT_ENVIRONMENT: Final = "production"
FIRST_NAME_KEY: Final = "$firstname"
LAST_NAME_KEY: Final = "$lastname"

# Batch.ignored keys: things that were unusable but did not invalidate the batch or the event.
IGNORED_UNKNOWN_KEYS: Final = "unknown_keys"
IGNORED_UNKNOWN_DATA_KEYS: Final = "unknown_data_keys"
IGNORED_ATTRIBUTE_VALUE: Final = "attribute_value_invalid"
IGNORED_USER_ATTRIBUTES: Final = "user_attributes_invalid"
IGNORED_DELETED_ATTRIBUTE: Final = "deleted_attribute_invalid"
IGNORED_IDENTITY: Final = "identity_invalid"
IGNORED_EMAIL: Final = "email_invalid"
IGNORED_TIMESTAMP: Final = "timestamp_invalid"
IGNORED_ID: Final = "id_invalid"
IGNORED_CUSTOM_ATTRIBUTES: Final = "custom_attributes_invalid"
IGNORED_DEVICE_INFO: Final = "device_info_invalid"

# Batch.ignored_events key for event types mParticle does not document.
UNKNOWN_EVENT_TYPE: Final = "unknown"

# The latest time accepted: 9,999,999,999 unix seconds, Customer.io's largest timestamp.
MAX_TIMESTAMP_MS: Final = 9_999_999_999_999

# Deepest nesting of an event's custom_attributes that is forwarded: far beyond real event data
# (mParticle's are flat), well inside orjson's serialisation limit (254 levels), which would
# otherwise fail the whole record as an internal error when the item is built.
MAX_DATA_DEPTH: Final = 64

_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_RESERVED_ALIASES: Final = {"$zipcode": "$zip", "$mobilenumber": "$mobile"}

KNOWN_BATCH_KEYS: Final = frozenset(
    {
        "api_key",
        "api_keys",
        "application_info",
        "attribution_info",
        "batch_id",
        "consent_state",
        "context",
        "deleted_user_attributes",
        "device_info",
        "environment",
        "events",
        "integration_attributes",
        "ip",
        "job_id",
        "mp_deviceid",
        "mpid",
        "origin_mpid",
        "partner_identities",
        "partner_identity",
        "sdk_version",
        "source_info",
        "source_request_id",
        "timestamp_unixtime_ms",
        "user_attributes",
        "user_identities",
    }
)

KNOWN_EVENT_TYPES: Final = frozenset(
    {
        "application_state_transition",
        "breadcrumb",
        "commerce_event",
        "crash_report",
        "custom_event",
        "first_run",
        "network_performance",
        "opt_out",
        "pre_attribution",
        "profile",
        "push_message",
        "push_reaction",
        "push_registration",
        "screen_view",
        "session_end",
        "session_start",
        "uninstall",
        "user_attribute_change",
        "user_identity_change",
    }
)

# Every ``data`` property of every event type in mParticle's Events API JSON Schema.
KNOWN_DATA_KEYS: Final = frozenset(
    {
        "action_identifier",
        "activity_type",
        "application_state",
        "application_transition_type",
        "breadcrumbs",
        "bytes_in",
        "bytes_out",
        "canonical_name",
        "class_name",
        "currency_code",
        "current_mpid",
        "custom_attributes",
        "custom_event_type",
        "custom_flags",
        "data",
        "data_connection_type",
        "deleted",
        "device_current_state",
        "event_id",
        "event_name",
        "event_num",
        "event_start_unixtime_ms",
        "event_system_notification_info",
        "exception_handled",
        "http_verb",
        "ios_image_base_address",
        "ios_image_size",
        "is_first_run",
        "is_goal_defined",
        "is_main_thread",
        "is_new_attribute",
        "is_non_interactive",
        "is_opted_out",
        "is_upgrade",
        "label",
        "launch_referral",
        "lifetime_value_attribute_name",
        "lifetime_value_change",
        "location",
        "message",
        "network",
        "new",
        "old",
        "pl_crash_report_file_base64",
        "previous_mpid",
        "product_action",
        "product_impressions",
        "profile_event_type",
        "promotion_action",
        "push_message_behavior",
        "push_message_token",
        "push_message_type",
        "push_notification_payload",
        "register",
        "registration_token",
        "response_code",
        "screen_name",
        "session_duration_ms",
        "session_id",
        "session_number",
        "session_start_unixtime_ms",
        "session_uuid",
        "severity",
        "shopping_cart",
        "source_message_id",
        "stack_trace",
        "successfully_closed",
        "time_elapsed",
        "timestamp_unixtime_ms",
        "topmost_context",
        "url",
        "user_attribute_name",
        "view_controller",
    }
)

_EVENT_KEYS: Final = frozenset({"event_type", "data"})
_NAME_KEYS: Final = frozenset({FIRST_NAME_KEY, LAST_NAME_KEY})
_SCALAR_TYPES: Final = frozenset({str, int, float, bool})


@dataclass(slots=True)
class Event:
    """One event the mapping uses, in batch order.

    ``timestamp_ms`` is the event's own time, else the batch's, else ``None``. ``name`` is the
    raw ``event_name`` / ``screen_name`` (empty for opt-out and install events).
    ``is_opted_out`` is meaningful for ``opt_out`` events only. ``position`` is the index in the
    batch's ``events`` array (all events counted), part of the fallback event identity.
    """

    kind: EventKind
    position: int
    timestamp_ms: int | None
    name: str = ""
    custom_attributes: dict[str, Any] | None = None
    source_message_id: str | None = None
    event_id: str | None = None
    is_opted_out: bool = False


@dataclass(slots=True)
class Batch:
    """One mParticle batch, normalised; see the module docstring for the rules."""

    mpid: str
    environment: str
    timestamp_ms: int | None
    batch_id: str | None
    email: str | None
    customer_id: str | None
    user_attributes: dict[str, AttributeValue]
    deleted_user_attributes: list[str]
    device_type: str
    events: list[Event]
    first_event_ms: int | None
    last_event_ms: int | None
    invalid_events: dict[str, int]
    ignored_events: dict[str, int]
    ignored: dict[str, int]


def required_mpid(raw: dict[str, Any], what: str) -> str:
    """The canonical mpid of ``raw``; ``mpid_missing`` / ``mpid_invalid`` rejections.

    mpid 0 is ``mpid_missing`` too: mParticle's SDKs use 0 as the temporary mpid of "no user
    yet" (Android SDK ``Constants.TEMPORARY_MPID = 0L``: ``getCurrentUser()`` is null while
    it is current, and a session never records it as a user's mpid), so it names no one; taken as a
    user, every such batch would fold into one shared person (docs/mapping.md §3)."""
    raw_mpid = raw.get("mpid")
    if raw_mpid is None:
        raise InvalidRecordError(Reason.MPID_MISSING, f"{what} has no mpid")
    mpid = int64_text(raw_mpid)
    if mpid is None:
        raise InvalidRecordError(Reason.MPID_INVALID, _mpid_invalid(_shown_mpid(raw_mpid)))
    if mpid == "0":
        raise InvalidRecordError(
            Reason.MPID_MISSING, f"{what} has mpid 0, mParticle's temporary id of no user"
        )
    return mpid


_UTF8_BOM: Final = b"\xef\xbb\xbf"
# _may_hold_big_integer: every digit becomes "0", so a digit run is found by plain search
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS: Final = b"0" * 20
_MINUS_NINETEEN_DIGITS: Final = b"-" + b"0" * 19
_UINT64_MAX: Final = (1 << 64) - 1


def _shown_mpid(raw_mpid: object) -> str:
    """How an invalid mpid is shown in its rejection (which is logged and kept in the dead
    letter): only its kind and size, never a character of it, since a source that put a phone
    number (``"+15551234567"``), an email or a name there would have it in the worker's log.
    A ``Decimal`` is an integer beyond 64 bits as the record writes it (:func:`_parse_batch_of`)."""
    if type(raw_mpid) in {int, Decimal}:
        return f"an integer of {len(str(raw_mpid).lstrip('-'))} digits"
    if type(raw_mpid) is float:
        return "a number with a fraction or an exponent"
    if type(raw_mpid) is str:
        return f"a string of {len(raw_mpid)} characters"
    return _json_type(raw_mpid)


def load_json(value: bytes) -> Any:
    """The decoded JSON of a record value; ``invalid_utf8`` / ``invalid_json`` rejections.

    JSON nested deeper than orjson's limit (1,024 levels) is rejected as ``too_deep``. One
    leading UTF-8 byte order mark is ignored (RFC 8259 §8.1 allows it); only a value orjson
    refuses is checked for one, so an ordinary record pays nothing. An integer beyond 64 bits
    (which orjson reads as a float, losing digits) is kept exact as its decimal text
    (:func:`_exact_integers`), so ``123456789012345678901234567890`` is sent as that text
    (docs/mapping.md §1), never as ``1.2345678901234568e+29``; a number beyond a double's
    range (``1e400``, an integer of 400 digits), which orjson refuses, is kept as written too
    (:func:`_refused`).
    """
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if not value.startswith(_UTF8_BOM):
            return _refused(value, exc)
        value = value[len(_UTF8_BOM) :]
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as bom_exc:
            return _refused(value, bom_exc)
    if _may_hold_big_integer(value):
        return _exact_integers(value, document)
    return document


# how orjson refuses a number beyond a double's range (tested)
_BEYOND_DOUBLE: Final = "number is infinity when parsed as double"


def _refused(value: bytes, exc: orjson.JSONDecodeError) -> Any:
    """``value``, which orjson refused with ``exc``, parsed by the standard library when its
    fault is a number beyond a double's range: each such number (and each integer beyond 64
    bits) kept as written. Past that number orjson read no further, so what it would also
    refuse is refused here (``NaN``, a lone surrogate: re-encoding checks it); anything else
    raises the rejection of ``value`` (:func:`_unreadable`)."""
    if not str(exc).startswith(_BEYOND_DOUBLE):
        raise _unreadable(value, exc) from None
    try:
        document = json.loads(
            value, parse_int=_int_or_text, parse_float=_float_or_text, parse_constant=_no_constant
        )
        orjson.dumps(document)
    except ValueError as stdlib_exc:  # json.JSONDecodeError, UnicodeDecodeError, a constant
        raise _unreadable(value, stdlib_exc) from None
    except (RecursionError, orjson.JSONEncodeError):
        raise _unreadable(value, exc) from None
    return document


def _float_or_text(text: str) -> float | str:
    """A JSON number with a fraction or exponent as a float, or as written beyond a double."""
    number = float(text)
    return text if math.isinf(number) else number


def _no_constant(name: str) -> NoReturn:
    """``NaN``, ``Infinity`` and ``-Infinity``, which the standard parser accepts: not JSON."""
    raise ValueError(f"{name} is not JSON")


def _unreadable(value: bytes, exc: ValueError) -> InvalidRecordError:
    """The rejection of ``value``, which a JSON parser refused with ``exc``."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as utf8_exc:
        return InvalidRecordError(Reason.INVALID_UTF8, str(utf8_exc))
    # orjson reports nesting beyond its limit as "depth limit exceeded: ..." (tested)
    if str(exc).startswith("depth limit"):
        return InvalidRecordError(Reason.TOO_DEEP, f"JSON nested too deeply: {exc}")
    return InvalidRecordError(Reason.INVALID_JSON, str(exc))


def _may_hold_big_integer(value: bytes) -> bool:
    """Whether ``value`` (JSON text) may write an integer orjson cannot hold (beyond
    ``[-2^63, 2^64)``): a run of 20 digits, or ``-`` and 19 digits past ``-2^63``. A run inside
    a string also says yes (the exact re-parse then changes nothing). One C ``translate`` and
    two searches: ~4.5 µs per 2.2 KB batch of the benchmark workload (orjson.loads ~11 µs,
    the whole step ~300 µs; timeit, best of 5), the cheapest scan measured (a regular
    expression ``[0-9]{20}`` costs 25x more). Not ``-`` + 19 digits alone: negative 19-digit
    mpids are everywhere, so each such run is compared with -2^63 exactly."""
    digits = value.translate(_DIGITS_AS_ZERO)
    if _TWENTY_DIGITS in digits:
        return True
    start = digits.find(_MINUS_NINETEEN_DIGITS)
    while start >= 0:
        if int(value[start : start + len(_MINUS_NINETEEN_DIGITS)]) < _INT64_MIN:
            return True
        start = digits.find(_MINUS_NINETEEN_DIGITS, start + 1)
    return False


def _exact_integers(value: bytes, document: Any) -> Any:
    """``value`` parsed again by the standard library, each integer beyond 64 bits kept as its
    decimal text (a Python int that large could not be serialised by orjson); ``document``
    (orjson's reading) when the standard parser's recursion limit is reached first (rare: such
    nesting is then cut or rejected later anyway). ``value`` is valid JSON (orjson read it)."""
    try:
        return json.loads(value, parse_int=_int_or_text)
    except RecursionError:
        return document


def _int_or_text(text: str) -> int | str:
    """A JSON integer's text as an int when orjson could have held it, else the text itself
    (longer than 20 characters, it is beyond ``[-2^63, 2^64)`` and never converted: Python
    refuses to convert more than 4,300 digits)."""
    if len(text) > len(_MINUS_NINETEEN_DIGITS):
        return text
    number = int(text)
    return number if _INT64_MIN <= number <= _UINT64_MAX else text


def parse_record(value: bytes) -> list[Batch]:
    """The batches of one Kafka record value, in order; an empty array is ``empty_record``."""
    document = load_json(value)
    if type(document) is dict:
        batches = [_parse_batch_of(value, document)]
    elif type(document) is list:
        if not document:
            raise InvalidRecordError(
                Reason.EMPTY_RECORD, "empty bulk array: the record holds no batch"
            )
        batches = []
        for index, item in enumerate(document):
            if type(item) is not dict:
                raise InvalidRecordError(
                    Reason.NOT_AN_OBJECT, f"bulk item {index} is {_json_type(item)}, not an object"
                )
            batches.append(_parse_batch_of(value, item, index))
    else:
        raise InvalidRecordError(
            Reason.NOT_AN_OBJECT, f"top level is {_json_type(document)}, not an object or array"
        )
    # Nesting depth never exceeds the number of '{' and '[' in the record: counting them (in C)
    # spares the walk for almost every record.
    if value.count(b"{") + value.count(b"[") > MAX_DATA_DEPTH:
        _check_depth(batches)
    return batches


def _parse_batch_of(value: bytes, raw: dict[str, Any], index: int | None = None) -> Batch:
    """:func:`parse_batch` of ``raw``, the record ``value`` (or its bulk item ``index``); an
    ``mpid_invalid`` rejection of a number kept as text by :func:`load_json` says it is a
    number, not a string."""
    try:
        return parse_batch(raw)
    except InvalidRecordError as exc:
        mpid = raw.get("mpid")
        # load_json keeps an integer beyond 64 bits (or a number beyond a double) as its text,
        # which _shown_mpid would call a string; the standard library's parser tells numbers
        # from strings (rare path)
        if exc.reason is not Reason.MPID_INVALID or type(mpid) is not str:
            raise
        try:
            document = json.loads(value, parse_int=Decimal)
        except RecursionError:  # nested past the standard parser's depth: keep orjson's reading
            raise exc from None
        written = (document if index is None else document[index])["mpid"]
        raise InvalidRecordError(Reason.MPID_INVALID, _mpid_invalid(_shown_mpid(written))) from None


def _mpid_invalid(shown: str) -> str:
    """The detail of an ``mpid_invalid`` rejection, the mpid ``shown`` by :func:`_shown_mpid`."""
    return f"mpid is not a signed 64-bit integer: {shown}"


def _check_depth(batches: list[Batch]) -> None:
    """``too_deep`` when an event's custom attributes nest beyond :data:`MAX_DATA_DEPTH`."""
    for batch in batches:
        for event in batch.events:
            if event.custom_attributes and _too_deep(event.custom_attributes, MAX_DATA_DEPTH):
                raise InvalidRecordError(
                    Reason.TOO_DEEP,
                    f"event custom_attributes nested deeper than {MAX_DATA_DEPTH} levels",
                )


def parse_batch(raw: dict[str, Any]) -> Batch:
    """Normalise one decoded batch object; raises :class:`InvalidRecordError` (see module)."""
    ignored: dict[str, int] = {}
    if not KNOWN_BATCH_KEYS.issuperset(raw):  # no set built for the usual batch
        _add(ignored, IGNORED_UNKNOWN_KEYS, len(raw.keys() - KNOWN_BATCH_KEYS))

    mpid = required_mpid(raw, "batch")

    environment = raw.get("environment")
    if environment is None:
        environment = DEFAULT_ENVIRONMENT
    elif type(environment) is str:
        environment = environment.lower()
    else:
        raise InvalidRecordError(
            Reason.ENVIRONMENT_INVALID, f"environment is {_json_type(environment)}"
        )

    raw_events = raw.get("events")
    if raw_events is None:
        raw_events = []
    elif type(raw_events) is not list:
        raise InvalidRecordError(Reason.EVENTS_NOT_A_LIST, f"events is {_json_type(raw_events)}")

    timestamp_ms = _timestamp(raw.get("timestamp_unixtime_ms"), ignored)
    email, customer_id = parse_identities(raw.get("user_identities"), ignored)
    # Positional, in field order: a slots dataclass's generated __init__ called with keywords
    # costs ~0.9 µs more here (1.42 against 0.54 µs, timeit).
    batch = Batch(
        mpid,
        environment,
        timestamp_ms,
        _optional_id(raw.get("batch_id"), ignored),  # batch_id
        email,
        customer_id,
        parse_user_attributes(raw.get("user_attributes"), ignored),
        parse_deleted_attributes(raw.get("deleted_user_attributes"), ignored),
        _device_type(raw.get("application_info"), raw.get("device_info"), ignored),
        [],  # events
        None,  # first_event_ms
        None,  # last_event_ms
        {},  # invalid_events
        {},  # ignored_events
        ignored,
    )
    _parse_events(raw_events, batch)
    return batch


def _parse_events(raw_events: list[Any], batch: Batch) -> None:
    """Fill ``batch.events``, its event time range and its event counters.

    The per-event work is written out in this one loop (names bound to locals, the usual
    shapes tested first, no call for a value that is already valid): it runs once per event,
    and the calls and the set built per event it replaces cost ~40 % of it (timeit)."""
    ignored = batch.ignored
    invalid_events = batch.invalid_events
    events = batch.events
    batch_time = batch.timestamp_ms
    known_data_keys = KNOWN_DATA_KEYS
    times: list[int] = []  # the events' own valid times
    for position, raw_event in enumerate(raw_events):
        if type(raw_event) is not dict:
            _count(invalid_events, "event_not_object")
            continue
        event_type = raw_event.get("event_type")
        if type(event_type) is not str:
            _count(invalid_events, "event_type_missing")
            continue
        data = raw_event.get("data")
        if type(data) is not dict:
            _count(invalid_events, "data_not_object")
            continue
        if len(raw_event) > 2:
            _add(ignored, IGNORED_UNKNOWN_KEYS, len(raw_event.keys() - _EVENT_KEYS))
        if not known_data_keys.issuperset(data):
            _add(ignored, IGNORED_UNKNOWN_DATA_KEYS, len(data.keys() - known_data_keys))

        own_time = data.get("timestamp_unixtime_ms")
        if own_time is not None and not (
            type(own_time) is int and 0 <= own_time <= MAX_TIMESTAMP_MS
        ):
            own_time = _timestamp(own_time, ignored)
        event = _event(
            event_type, data, position, batch_time if own_time is None else own_time, ignored
        )
        if isinstance(event, str):
            _count(invalid_events, event)
            continue
        if event is None:
            _count(
                batch.ignored_events,
                event_type if event_type in KNOWN_EVENT_TYPES else UNKNOWN_EVENT_TYPE,
            )
        else:
            events.append(event)
        if own_time is not None:
            times.append(own_time)
    if times:
        batch.first_event_ms = min(times)
        batch.last_event_ms = max(times)


def _event(
    event_type: str,
    data: dict[str, Any],
    position: int,
    event_time: int | None,
    ignored: dict[str, int],
) -> Event | str | None:
    """The :class:`Event` to keep, an invalid-event reason, or ``None`` for an unused type."""
    if event_type == "custom_event":
        kind: EventKind = "custom_event"
        name = data.get("event_name")
    elif event_type == "screen_view":
        kind = "screen_view"
        name = data.get("screen_name")
    elif event_type == "opt_out":
        is_opted_out = data.get("is_opted_out")
        if type(is_opted_out) is not bool:
            return "opt_out_flag_missing"
        return Event("opt_out", position, event_time, "", None, None, None, is_opted_out)
    elif event_type == "first_run" or (
        event_type == "application_state_transition" and data.get("is_first_run") is True
    ):
        return Event("install", position, event_time)
    else:
        return None
    if type(name) is not str or not name.strip():
        return "event_name_missing" if kind == "custom_event" else "screen_name_missing"
    custom_attributes = data.get("custom_attributes")
    if custom_attributes is not None and type(custom_attributes) is not dict:
        _count(ignored, IGNORED_CUSTOM_ATTRIBUTES)
        custom_attributes = None
    source_message_id = data.get("source_message_id")
    if type(source_message_id) is not str or not source_message_id:
        source_message_id = None
    event_id = data.get("event_id")
    if type(event_id) is int and _INT64_MIN <= event_id <= _INT64_MAX:
        event_id = str(event_id)  # the usual id, as int64_text gives it, without two calls
    elif event_id is not None:
        event_id = _optional_id(event_id, ignored)
    # positional: with keywords a slots dataclass's __init__ costs 1.20 against 0.26 µs (timeit)
    return Event(kind, position, event_time, name, custom_attributes, source_message_id, event_id)


def int64_text(value: object) -> str | None:
    """``value`` as a canonical signed 64-bit decimal string, or ``None`` if it is not one.

    Accepts a JSON integer (never a bool or a float) or a string of ASCII digits with an
    optional leading ``-``; leading zeros are dropped (``"007"`` → ``"7"``).
    """
    if type(value) is int:
        return str(value) if _INT64_MIN <= value <= _INT64_MAX else None
    if type(value) is str:
        digits = value[1:] if value[:1] == "-" else value
        if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > 19:
            return None
        number = int(value)
        return str(number) if _INT64_MIN <= number <= _INT64_MAX else None
    return None


def _optional_id(value: object, ignored: dict[str, int]) -> str | None:
    if value is None:
        return None
    text = int64_text(value)
    if text is None:
        _count(ignored, IGNORED_ID)
    return text


def _timestamp(value: object, ignored: dict[str, int]) -> int | None:
    """Unix milliseconds from an integer (or integral float / digit string), else ``None``.

    Beyond :data:`MAX_TIMESTAMP_MS` (year 2286) a time is invalid: Customer.io takes unix
    seconds of at most ten digits, and the ULID time part ends a little later anyway."""
    if value is None:
        return None
    milliseconds: int | None = None
    if type(value) is int:
        milliseconds = value
    elif (type(value) is float and value.is_integer()) or (
        type(value) is str and value.isascii() and value.isdigit() and len(value) <= 15
    ):
        milliseconds = int(value)
    if milliseconds is None or not 0 <= milliseconds <= MAX_TIMESTAMP_MS:
        _count(ignored, IGNORED_TIMESTAMP)
        return None
    return milliseconds


def parse_identities(value: object, ignored: dict[str, int]) -> tuple[str | None, str | None]:
    """``(email, customer_id)`` from any of the three accepted shapes.

    Array entries may be outbound ``{identity_type, identity}`` or Firehose
    ``{type, encoding, value}`` objects (type ``customer`` = customer id). Hashed Firehose
    entries (``encoding`` other than ``raw``) cannot supply an identity and are skipped.
    """
    if value is None:
        return None, None
    if type(value) is dict:
        return (
            _email_identity(value.get("email"), ignored),
            _identity_value(value.get("customer_id"), ignored, integer_allowed=True),
        )
    if type(value) is not list:
        raise InvalidRecordError(
            Reason.IDENTITIES_INVALID, f"user_identities is {_json_type(value)}"
        )
    email = customer_id = None
    for entry in value:
        if type(entry) is not dict:
            _count(ignored, IGNORED_IDENTITY)
            continue
        identity_type = entry.get("identity_type", entry.get("type"))
        if type(identity_type) is not str:
            _count(ignored, IGNORED_IDENTITY)
            continue
        if entry.get("encoding", "raw") != "raw":
            continue
        identity = entry.get("identity", entry.get("value"))
        identity_type = identity_type.lower()
        if identity_type == "email":
            email = _email_identity(identity, ignored) or email
        elif identity_type in {"customer_id", "customer"}:
            customer_id = _identity_value(identity, ignored, integer_allowed=True) or customer_id
    return email, customer_id


def _email_identity(value: object, ignored: dict[str, int]) -> str | None:
    """A trimmed email identity that is an address (:mod:`app.core.emails`); a placeholder such as
    ``N/A`` is no email: counted as ``email_invalid`` and treated as absent."""
    email = _identity_value(value, ignored, integer_allowed=False)
    if email is None or is_email_address(email):
        return email
    _count(ignored, IGNORED_EMAIL)
    return None


def _identity_value(value: object, ignored: dict[str, int], *, integer_allowed: bool) -> str | None:
    """A trimmed, non-empty identity; integer customer ids (some feeds) become text."""
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    if integer_allowed and type(value) is int:
        return str(value)
    _count(ignored, IGNORED_IDENTITY)
    return None


def canonical_attribute_name(name: str) -> str:
    """Reserved ``$`` names → ``$`` + lower case with aliases merged; custom names unchanged."""
    if name[:1] != "$":
        return name
    lowered = name.lower()
    return _RESERVED_ALIASES.get(lowered, lowered)


def parse_user_attributes(value: object, ignored: dict[str, int]) -> dict[str, AttributeValue]:
    """A ``user_attributes`` map, canonicalised; unusable values are counted in ``ignored``."""
    if value is None:
        return {}
    if type(value) is not dict:
        _count(ignored, IGNORED_USER_ATTRIBUTES)
        return {}
    attributes: dict[str, AttributeValue] = {}
    scalar_types = _SCALAR_TYPES
    for name, item in value.items():
        # Most names are custom (kept as they are): canonicalised without a call for them.
        if name[:1] == "$":
            key = canonical_attribute_name(name)
            if key in _NAME_KEYS:
                if item is None or type(item) is str:
                    attributes[key] = item
                else:
                    _count(ignored, IGNORED_ATTRIBUTE_VALUE)
                continue
        else:
            key = name
        if (
            item is None
            or type(item) in scalar_types
            or (type(item) is list and all(type(part) in scalar_types for part in item))
        ):
            attributes[key] = item
        else:
            _count(ignored, IGNORED_ATTRIBUTE_VALUE)
    return attributes


def parse_deleted_attributes(value: object, ignored: dict[str, int]) -> list[str]:
    """A ``deleted_user_attributes`` list, canonicalised; bad names counted in ``ignored``."""
    if value is None:
        return []
    if type(value) is not list:
        _count(ignored, IGNORED_DELETED_ATTRIBUTE)
        return []
    names = []
    for name in value:
        if type(name) is str and name:
            names.append(canonical_attribute_name(name))
        else:
            _count(ignored, IGNORED_DELETED_ATTRIBUTE)
    return names


def _device_type(application_info: object, device_info: object, ignored: dict[str, int]) -> str:
    """``application_info.os``, else ``device_info.platform``, else ``Unknown``."""
    for info, key in ((application_info, "os"), (device_info, "platform")):
        if info is None:
            continue
        if type(info) is not dict:
            _count(ignored, IGNORED_DEVICE_INFO)
            continue
        name = info.get(key)
        if type(name) is str and name.strip():
            return name.strip()
    return UNKNOWN_DEVICE_TYPE


def _too_deep(value: dict[str, Any] | list[Any], budget: int) -> bool:
    """True when ``value`` nests objects/arrays more than ``budget`` levels (itself = 1).

    Iterative, so a hostile depth cannot exhaust Python's own recursion limit.
    """
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > budget:
            return True
        children = container.values() if type(container) is dict else container
        pending.extend(
            (child, depth + 1) for child in children if type(child) is dict or type(child) is list
        )
    return False


def _count(counters: dict[str, int], key: str) -> None:
    counters[key] = counters.get(key, 0) + 1


def _add(counters: dict[str, int], key: str, amount: int) -> None:
    if amount:
        counters[key] = counters.get(key, 0) + amount


def _json_type(value: object) -> str:
    """The JSON type name of a decoded value, for messages that must not echo the data."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) in (int, float):
        return "a number"
    if type(value) is str:
        return "a string"
    if type(value) is list:
        return "an array"
    return "an object"
