"""The consumer's hole check (app.faust_app.hole_to_reread): re-read a hole once, then accept."""

from __future__ import annotations

from app.faust_app import hole_to_reread


def test_contiguous_records_are_handed_out() -> None:
    assert hole_to_reread(43, 43, None) is None
    assert hole_to_reread(None, 65, None) is None  # nothing known yet (first record, changelog)


def test_a_record_behind_the_expected_offset_is_left_to_faust() -> None:
    assert hole_to_reread(43, 40, None) is None  # faust drops or re-reads it by its own offsets


def test_a_first_hole_is_read_again_from_its_first_missing_offset() -> None:
    # the kill loop's case: 27-42 processed, then 65 arrived (43-64 dropped by faust's getmany)
    assert hole_to_reread(43, 65, None) == (43, 65)


def test_the_same_hole_seen_twice_holds_no_data_and_is_accepted() -> None:
    assert hole_to_reread(43, 65, (43, 65)) is None  # transaction markers / aborted records


def test_a_different_hole_is_checked_again() -> None:
    assert hole_to_reread(43, 66, (43, 65)) == (43, 66)
