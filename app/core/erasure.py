"""Data-subject erasure requests (SPEC §5): what to delete in Customer.io, whose state to purge.

Accepted record values (JSON, on ``mparticle-erasure``, key = mpid when known), OpenDSR's
shape as mParticle's DSR API uses it:

``{"subject_request_id": "...", "subject_request_type": "erasure", "mpid": 123,
"subject_identities": [{"identity_type": "email", "identity_value": "a@b.c",
"identity_format": "raw"}, ...]}`` (OpenDSR's ``identity_format``; ``encoding`` is read too
when it is absent); ``subject_identities`` may also be mParticle's map
``{"email": {"value": ...}, "customer_id": {"value": ...}}``, which is the Firehose
``dsr_processing_request`` shape:
``{"<type>": {"encoding": "raw" | "md5" | "sha1" | "sha256", "value": ...}}``. In both forms
the type is ``email``, ``customer_id`` or ``controller_customer_id`` (other types, device
ids, are ignored) and the encoding (format) is read the same way: in any case and without
surrounding whitespace (``"SHA256"``), raw when absent.
Every identity named counts: a list may name two emails or two customer ids, the map both
``customer_id`` and ``controller_customer_id``. A raw email that is not an address (``N/A``;
:mod:`app.core.emails`) is ignored. Other request types (access, portability) are acknowledged
and counted, not acted on.

Who is erased: the user named by ``mpid``; for a request without mpid (every Firehose DSR),
each user whose stored state :func:`matches` the request: raw identities compare equal in the
form :func:`normalised_email` / :func:`normalised_customer_id` give (the identity markers'
form too), hashed ones compare by hashing the stored email (as stored and trimmed
lower-case, the form mParticle hashes) or customer id with the request's algorithm.

:func:`plan_erasure` is pure: given the request and a matched user's stored state, it returns
the Customer.io ``delete`` items (one per distinct person identifier known for that user: the
customer_id, the email and the person id last used, plus every raw customer id and email the
request names, matched or not; one over Customer.io's 150-byte limit names no person and is
left out) and whether to purge the state.

Identity markers: an erasure names identities as well as (or instead of) an mpid, and the
user's batches that reached Kafka before it may be read after it (lag; the topics are read in no
set order) on a partition that holds nothing of the user yet. :func:`request_marker_keys` gives
the keys under which the worker keeps the erasure's time for each identity it names, and
:func:`identity_marker_keys` the keys a batch's or audience update's own identities are looked up
under: ``id:`` + BLAKE2b-128 (hex) of ``<kind>:<SHA-256 hex of the normalised identity>``
(:func:`normalised_email`: trimmed lower-case, the form mParticle hashes;
:func:`normalised_customer_id`: trimmed). A request hashed with
SHA-256 gives that digest itself, so it marks the same key; one hashed with MD5 or SHA-1 cannot
be brought to it and leaves no identity marker (README "Audiences and erasure"). A key holds no
identity in clear and never collides with an mpid key (decimal digits).

Failure semantics: an unusable record raises :class:`~app.errors.InvalidRecordError`
(``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``mpid_invalid``, and
``erasure_invalid`` when it names neither an mpid nor an identity, names an email or customer
id with an encoding other than those above (never silently left out), or has no
``subject_request_type``: nothing defaults to an erasure, the worker dead-letters it).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.core.emails import is_email_address
from app.core.mparticle import int64_text, load_json
from app.core.transform import is_person_identifier
from app.errors import InvalidRecordError, Reason

if TYPE_CHECKING:
    from app.core.state import UserState

ErasureOutcome = Literal["erased", "no_match", "not_erasure"]


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """One parsed request. ``emails`` / ``customer_ids``: every raw identity of that kind it
    names (trimmed, in request order, no duplicates; a request may name two addresses of one
    person); ``hashed``: (identity kind ``email`` | ``customer_id``, algorithm, lower-case hex
    digest) of each hashed one."""

    request_id: str | None
    request_type: str
    mpid: str | None
    emails: tuple[str, ...] = ()
    customer_ids: tuple[str, ...] = ()
    hashed: tuple[tuple[str, str, str], ...] = ()


HASH_ENCODINGS = frozenset({"md5", "sha1", "sha256"})
# an unknown identity encoding quoted in a rejection: a short word of ASCII letters, maybe
# with a few digits after them (``sha512``, ``sha-512``), never a value put there (a card or
# phone number, an address)
_PLAIN_WORD = re.compile(r"[A-Za-z]{1,12}(?:[-_]?[0-9]{1,3})?")


@dataclass(frozen=True, slots=True)
class ErasurePlan:
    outcome: ErasureOutcome
    deletes: tuple[dict[str, Any], ...]  # Customer.io v2 delete items
    purge_state: bool


#: How far ahead of the worker's clock an erasure's Kafka time is taken as it is. Clocks some
#: milliseconds to seconds apart are normal, and the batches of the same source are stamped by
#: the same clock: clamping them would let a batch that reached Kafka before the erasure
#: through (seen in CI: a producer a few hundred ms ahead recreated 3 erased people). Beyond
#: it the source's clock is wrong (an hour ahead would drop an hour of batches): clamped to it,
#: and logged (WARNING).
CLOCK_AHEAD_TOLERANCE_MS = 5_000


#: Start of an identity marker's key in the erasures table (an mpid key is decimal digits).
IDENTITY_MARKER_PREFIX = "id:"


def identity_marker_key(kind: str, sha256_hex: str) -> str:
    """The erasures-table key of identity ``kind`` (``email`` / ``customer_id``) whose
    normalised form has the SHA-256 digest ``sha256_hex`` (lower-case hex): ``id:`` + 32 hex
    digits (module docstring)."""
    inner = f"{kind}:{sha256_hex}".encode()
    return IDENTITY_MARKER_PREFIX + hashlib.blake2b(inner, digest_size=16).hexdigest()


def normalised_email(email: str) -> str:
    """The form an email is compared, hashed and marked in: trimmed and lower-cased, the form
    mParticle hashes (``str.lower``, not ``casefold``: ``ß`` stays ``ß`` as in mParticle's
    hash), in Unicode NFC: ``José`` typed as ``e`` + combining accent (NFD, as some keyboards
    and macOS file names give it) is the same address as the precomposed ``é`` and must be
    erased by it (an unchanged ASCII address costs one quick check). The one rule for
    :func:`matches` and the identity markers, so a state the request matches and a record its
    marker drops are the same people."""
    return unicodedata.normalize("NFC", email.strip().lower())


def normalised_customer_id(customer_id: str) -> str:
    """The form a customer id is compared, hashed and marked in: trimmed (ids are
    case-sensitive)."""
    return customer_id.strip()


def identity_marker_keys(email: str | None, customer_id: str | None) -> list[str]:
    """The identity-marker keys of a user's ``email`` and ``customer_id`` (None or empty: not
    known), email first: one store read each when a record is admitted (module docstring)."""
    keys = []
    if email:
        keys.append(identity_marker_key("email", _sha256(normalised_email(email))))
    if customer_id:
        normalised = normalised_customer_id(customer_id)
        keys.append(identity_marker_key("customer_id", _sha256(normalised)))
    return keys


def request_marker_keys(request: ErasureRequest) -> list[str]:
    """The identity-marker keys an erasure ``request`` leaves, without duplicates: one per raw
    email and customer id it names, and per SHA-256-hashed identity (MD5 / SHA-1 ones cannot
    be brought to the key)."""
    keys = [
        *(identity_marker_keys(email, None)[0] for email in request.emails),
        *(identity_marker_keys(None, customer_id)[0] for customer_id in request.customer_ids),
        *(
            identity_marker_key(kind, digest)
            for kind, algorithm, digest in request.hashed
            if algorithm == "sha256"
        ),
    ]
    return list(dict.fromkeys(keys))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def erasure_time(record_ms: int | None, now_ms: int) -> int:
    """The erasure time the worker records for a user (ms since the epoch): the request's
    Kafka timestamp ``record_ms``, at most :data:`CLOCK_AHEAD_TOLERANCE_MS` later than the
    worker's clock ``now_ms`` when it applies it (``now_ms`` when the record has no timestamp).

    Batches whose Kafka time is at or before it are dropped as erased (``admit``). The time is
    the producer's (CreateTime): an erasure stamped an hour ahead would otherwise drop every
    batch of the user for that hour; clamped, it drops at most the batches stamped within the
    tolerance after the worker applied it. A source clock behind is not corrected (see README,
    Limits)."""
    if record_ms is None:
        return now_ms
    return min(record_ms, now_ms + CLOCK_AHEAD_TOLERANCE_MS)


def parse_erasure_record(value: bytes) -> ErasureRequest:
    document = load_json(value)
    if type(document) is not dict:
        raise InvalidRecordError(Reason.NOT_AN_OBJECT, "erasure request is not a JSON object")
    raw_mpid = document.get("mpid")
    mpid = None if raw_mpid is None else int64_text(raw_mpid)
    if raw_mpid is not None and mpid is None:
        raise InvalidRecordError(Reason.MPID_INVALID, "mpid is not a signed 64-bit integer")
    emails, customer_ids, hashed = _subject_identities(document.get("subject_identities"))
    if mpid is None and not emails and not customer_ids and not hashed:
        raise InvalidRecordError(
            Reason.ERASURE_INVALID, "request names no mpid, email or customer_id"
        )
    request_type = document.get("subject_request_type")
    if type(request_type) is not str or not request_type.strip():
        # No default: an erasure is irreversible, so only a request that says so is one.
        raise InvalidRecordError(
            Reason.ERASURE_INVALID, "subject_request_type is missing (erasure, access, portability)"
        )
    request_id = document.get("subject_request_id")
    return ErasureRequest(
        request_id=request_id if type(request_id) is str else None,
        request_type=request_type.strip().lower(),
        mpid=mpid,
        emails=emails,
        customer_ids=customer_ids,
        hashed=hashed,
    )


def _subject_identities(
    value: object,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """(raw emails, raw customer ids, hashed identities) of ``subject_identities``: EVERY one
    named, so a list naming two addresses (or the map naming both ``customer_id`` and
    ``controller_customer_id``) erases the person under each (module docstring)."""
    raw: dict[str, list[str]] = {"email": [], "customer_id": []}
    hashed: list[tuple[str, str, str]] = []
    named: list[tuple[object, object, object]] = []  # (type, value, encoding), raw if absent
    if type(value) is dict:
        for kind, entry in value.items():
            if type(entry) is dict:
                named.append((kind, entry.get("value"), entry.get("encoding", "raw")))
            else:
                named.append((kind, entry, "raw"))
    elif type(value) is list:
        for entry in value:
            if type(entry) is dict:
                # OpenDSR names the encoding ``identity_format``; mParticle's map ``encoding``
                encoding = entry.get("identity_format", entry.get("encoding", "raw"))
                text = entry.get("identity_value", entry.get("value"))
                named.append((entry.get("identity_type"), text, encoding))
    for kind, text, encoding in named:
        if type(kind) is not str or type(text) not in (str, int) or _kind(kind) not in raw:
            continue
        name = _encoding(kind, encoding)
        if name in HASH_ENCODINGS:
            hashed.append((_kind(kind), name, str(text).strip().lower()))
        else:
            raw[_kind(kind)].append(str(text).strip())
    # a placeholder such as "N/A" names no person (app.core.emails)
    emails = [email for email in raw["email"] if email and is_email_address(email)]
    customer_ids = [customer_id for customer_id in raw["customer_id"] if customer_id]
    return tuple(dict.fromkeys(emails)), tuple(dict.fromkeys(customer_ids)), tuple(hashed)


def _encoding(kind: str, encoding: object) -> str:
    """``encoding`` of the ``kind`` identity as ``raw`` or one of :data:`HASH_ENCODINGS`, in
    any case and with surrounding whitespace (``"SHA256"``, ``" Raw "``); ``erasure_invalid``
    for any other, since leaving that identity out would leave its person in Customer.io
    unsaid. The detail quotes an unknown encoding only when it is a short plain word."""
    name = encoding.strip().lower() if type(encoding) is str else None
    if name == "raw" or name in HASH_ENCODINGS:
        return name
    if type(encoding) is not str:
        shown = "an encoding that is not a string"
    elif _PLAIN_WORD.fullmatch(encoding):
        shown = f"encoding {encoding!r}"
    else:
        shown = f"an encoding of {len(encoding)} characters"
    raise InvalidRecordError(
        Reason.ERASURE_INVALID,
        f"subject identity {kind} has {shown}, not raw, md5, sha1 or sha256",
    )


def _kind(name: str) -> str:
    lowered = name.lower()
    return "customer_id" if lowered in ("customer_id", "controller_customer_id") else lowered


def matches(request: ErasureRequest, state: UserState) -> bool:
    """True when ``state`` is the subject of ``request`` by any identity it names (module
    docstring); emails and customer ids compare in the identity markers' form
    (:func:`normalised_email`, :func:`normalised_customer_id`)."""
    if state.email and normalised_email(state.email) in {
        normalised_email(email) for email in request.emails
    }:
        return True
    if state.customer_id and normalised_customer_id(state.customer_id) in {
        normalised_customer_id(customer_id) for customer_id in request.customer_ids
    }:
        return True
    for kind, algorithm, digest in request.hashed:
        known = state.email if kind == "email" else state.customer_id
        if known and digest in {
            hashlib.new(algorithm, form.encode("utf-8")).hexdigest()
            # as stored; as mParticle hashes; in our compared form (NFC)
            for form in (known, known.strip().lower(), normalised_email(known))
        }:
            return True
    return False


def plan_erasure(request: ErasureRequest, state: UserState | None) -> ErasurePlan:
    """The deletes and purge for ``request`` given the stored ``state`` (module docstring).

    Outcome ``erased`` when a stored user state is erased (purged), ``no_match`` when there is
    none (the deletes of the request's raw identities still go out: the person may be known to
    Customer.io from before this deployment, or from another partition's users), and
    ``not_erasure`` for an access or portability request (nothing done)."""
    if request.request_type != "erasure":
        return ErasurePlan("not_erasure", (), purge_state=False)
    candidates: list[dict[str, str] | None] = []
    if state is not None:
        candidates += [
            {"id": state.customer_id} if state.customer_id else None,
            {"email": state.email} if state.email else None,
        ]
        if state.person_id:  # the id last used, if it has changed since
            pid = state.person_id
            candidates.append({"email": pid} if pid == state.email else {"id": pid})
    # every raw identity the request names: a person Customer.io knows only by one of them
    candidates += [{"id": customer_id} for customer_id in request.customer_ids]
    candidates += [{"email": email} for email in request.emails]
    identifiers: list[dict[str, str]] = []
    for identifier in candidates:
        if (
            identifier is not None
            and identifier not in identifiers
            and is_person_identifier(next(iter(identifier.values())))
        ):
            identifiers.append(identifier)
    deletes = tuple(
        {"type": "person", "identifiers": identifier, "action": "delete"}
        for identifier in identifiers
    )
    if state is None:
        return ErasurePlan("no_match", deletes, purge_state=False)
    return ErasurePlan("erased", deletes, purge_state=True)
