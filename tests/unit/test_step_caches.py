"""The per-record step's caches give what they cache, and stay bounded (issue 19, Round 9)."""

from __future__ import annotations

from app.core.erasure import identity_marker_keys
from app.core.pipeline import (
    MARKER_KEYS_REMEMBERED,
    _identity_marker_keys,
)


def test_remembered_identity_marker_keys_are_the_keys_and_bounded() -> None:
    identities = [
        ("a@x.io", "c-1"),
        (" A@X.io ", None),  # normalised: the same email key as above
        (None, "c-1"),
        (None, None),
        ("", ""),
    ]
    for _ in range(2):  # a miss, then a hit
        for email, customer_id in identities:
            assert _identity_marker_keys(email, customer_id) == tuple(
                identity_marker_keys(email, customer_id)
            )
    assert _identity_marker_keys("a@x.io", None)[0] == _identity_marker_keys(" A@X.io ", None)[0]
    assert _identity_marker_keys.cache_info().maxsize == MARKER_KEYS_REMEMBERED
