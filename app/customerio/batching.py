"""Pack v2 batch items into requests within Customer.io's limits. Pure.

A request body is ``{"batch":[item,item,...]}`` built by joining the items' JSON bytes, so no
item is encoded twice. Limits: at most ``max_items`` items and ``max_bytes`` bytes per request
(Customer.io: 500 KB), each item at most ``max_item_bytes`` (Customer.io: 32 KB). Items keep
their order across the requests they are split into.

Failure semantics: an item larger than ``max_item_bytes`` cannot be sent at all; it is
returned in ``oversized`` for the caller to dead-letter (transform already cuts items to fit,
so this only guards against a bug or a foreign record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.customerio.limits import MAX_ITEM_BYTES

Ref = TypeVar("Ref")

_PREFIX = b'{"batch":['
_SUFFIX = b"]}"
ENVELOPE_BYTES = len(_PREFIX) + len(_SUFFIX)


@dataclass(slots=True)
class BatchRequest(Generic[Ref]):
    """One v2 batch request: the items' bytes and, per item, the caller's reference."""

    payloads: list[bytes] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)
    size: int = ENVELOPE_BYTES

    def body(self) -> bytes:
        return _PREFIX + b",".join(self.payloads) + _SUFFIX

    def __len__(self) -> int:
        return len(self.payloads)


@dataclass(slots=True)
class Packed(Generic[Ref]):
    requests: list[BatchRequest[Ref]]
    oversized: list[tuple[bytes, Ref]]


def pack(
    items: list[tuple[bytes, Ref]],
    *,
    max_items: int,
    max_bytes: int,
    max_item_bytes: int = MAX_ITEM_BYTES,
) -> Packed[Ref]:
    """Split ``(payload, ref)`` pairs, in order, into as few requests as the limits allow."""
    requests: list[BatchRequest[Ref]] = []
    oversized: list[tuple[bytes, Ref]] = []
    current: BatchRequest[Ref] = BatchRequest()
    for payload, ref in items:
        if len(payload) > max_item_bytes:
            oversized.append((payload, ref))
            continue
        added = len(payload) + (1 if current.payloads else 0)  # the comma
        if current.payloads and (
            len(current.payloads) >= max_items or current.size + added > max_bytes
        ):
            requests.append(current)
            current = BatchRequest()
            added = len(payload)
        current.payloads.append(payload)
        current.refs.append(ref)
        current.size += added
    if current.payloads:
        requests.append(current)
    return Packed(requests, oversized)
