"""Customer.io Track API v2 limits, in one place (SPEC §3, end; the Track API reference).

Sizes are bytes of UTF-8. The mapping (:mod:`app.core.transform`) cuts what it sends to fit,
the sink's packing (:mod:`app.customerio.batching`) enforces the item and request sizes, and
the emulator (:mod:`app.dev.emulator.validation`) rejects what the real API would reject. Pure
constants: imported by the core, so nothing else may be imported here.
"""

from __future__ import annotations

from typing import Final

#: One v2 batch request (Customer.io: 500 KB).
MAX_REQUEST_BYTES: Final = 500_000
#: One batch item (Customer.io: 32 KB; 32,000 leaves room for either reading of "KB").
MAX_ITEM_BYTES: Final = 32_000
#: A person identifier (``id``, ``email``, ``cio_id`` value).
MAX_IDENTIFIER_BYTES: Final = 150
MAX_ATTRIBUTE_NAME_BYTES: Final = 150
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1000
MAX_ATTRIBUTES_PER_IDENTIFY: Final = 300
#: Unique attributes Customer.io keeps per person; it drops a new one beyond them silently.
MAX_ATTRIBUTES_PER_PERSON: Final = 300
#: Of those, what the forwarder leaves for its own: first_name, last_name, created_at,
#: unsubscribed, SegmentMembership (the email is an identifier, not counted).
OWN_ATTRIBUTES_PER_PERSON: Final = 5
MAX_EVENT_NAME_BYTES: Final = 100
#: An event's ``attributes`` (its data), as JSON.
MAX_EVENT_DATA_BYTES: Final = 100_000
