"""Verdict ids made a batch at a time."""

from __future__ import annotations

import re

from monitor.records import new_verdict_ids


def test_a_batch_of_verdict_ids_is_that_many_distinct_32_digit_hex_ids() -> None:
    ids = new_verdict_ids(64)
    assert len(ids) == 64
    assert len(set(ids)) == 64
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_no_verdict_ids_for_an_empty_batch() -> None:
    assert new_verdict_ids(0) == []
