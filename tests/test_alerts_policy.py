"""The cooldown and digest rules of one sink, with the clock passed in: no threads, no servers, no sleeps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.alerts.events import Alert
from monitor.alerts.policy import MAX_DIGEST, AlertPolicy

COOLDOWN = 60.0


def _policy(cooldown_s: float = COOLDOWN, digest_after: int = 5, max_digest: int = MAX_DIGEST) -> AlertPolicy:
    return AlertPolicy(cooldown_s=cooldown_s, digest_after=digest_after, max_digest=max_digest)


def _alerts(*specs: str) -> list[Alert]:
    """Pending alerts oldest first from "kind@source" specs, e.g. "anomaly@line1", "camera_lost@cam1"."""
    out = []
    for seq, spec in enumerate(specs):
        kind, source = spec.split("@")
        out.append(Alert.new(seq, "sink", kind, source, created=1000.0 + seq))
    return out


# --- cooldown -------------------------------------------------------------------------------------
def test_the_first_anomaly_of_a_source_goes_out_at_once() -> None:
    decision = _policy().on_anomaly("line1", scored_at=1000.0, score=0.5, now=0.0)
    assert decision.send and decision.suppressed is None


def test_an_anomaly_within_the_cooldown_is_held_and_counted() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    first = policy.on_anomaly("line1", 1010.0, 0.6, now=10.0)
    second = policy.on_anomaly("line1", 1020.0, 0.7, now=20.0)
    assert not first.send and first.held == 1
    assert not second.send and second.held == 2


def test_the_first_alert_after_the_cooldown_carries_the_summary_of_what_was_held() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1010.0, 0.9, now=10.0)
    policy.on_anomaly("line1", 1020.0, 0.7, now=20.0)
    decision = policy.on_anomaly("line1", 1061.0, 0.6, now=61.0)
    assert decision.send
    assert decision.suppressed == {"count": 2, "first": 1010.0, "last": 1020.0, "max_score": 0.9}


def test_the_cooldown_ends_exactly_cooldown_s_after_the_last_alert() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    assert not policy.on_anomaly("line1", 1059.0, 0.5, now=59.999).send
    assert policy.on_anomaly("line1", 1060.0, 0.5, now=60.0).send


def test_an_alert_that_goes_out_starts_a_new_cooldown_with_nothing_held() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1010.0, 0.5, now=10.0)
    policy.on_anomaly("line1", 1061.0, 0.5, now=61.0)
    held = policy.on_anomaly("line1", 1062.0, 0.5, now=62.0)
    assert not held.send and held.held == 1
    assert policy.on_anomaly("line1", 1121.0, 0.5, now=121.0).suppressed["count"] == 1


def test_the_cooldown_is_per_source() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    assert policy.on_anomaly("line2", 1001.0, 0.5, now=1.0).send
    assert not policy.on_anomaly("line1", 1002.0, 0.5, now=2.0).send


def test_a_cooldown_of_zero_never_holds() -> None:
    policy = _policy(cooldown_s=0)
    decisions = [policy.on_anomaly("line1", 1000.0, 0.5, now=0.0) for _ in range(5)]
    assert all(d.send and d.suppressed is None for d in decisions)
    assert policy.next_digest_at() is None


# --- the digest of what a cooldown held -----------------------------------------------------------
def test_no_digest_is_due_while_nothing_is_held() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    assert policy.next_digest_at() is None
    assert policy.due_digests(now=1000.0) == []


def test_a_digest_is_due_when_the_earliest_cooldown_that_holds_anomalies_ends() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line2", 1005.0, 0.5, now=5.0)
    policy.on_anomaly("line2", 1006.0, 0.5, now=6.0)  # held: line2's cooldown ends at 65
    assert policy.next_digest_at() == 65.0
    policy.on_anomaly("line1", 1007.0, 0.5, now=7.0)  # held: line1's cooldown ends at 60
    assert policy.next_digest_at() == 60.0


def test_nothing_is_flushed_before_the_cooldown_ends() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1010.0, 0.5, now=10.0)
    assert policy.due_digests(now=59.0) == []
    assert policy.next_digest_at() == 60.0


def test_at_the_cooldown_end_the_held_anomalies_are_flushed_as_one_summary() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1010.0, 0.8, now=10.0)
    policy.on_anomaly("line1", 1020.0, 0.6, now=20.0)
    assert policy.due_digests(now=60.0) == [
        ("line1", {"count": 2, "first": 1010.0, "last": 1020.0, "max_score": 0.8})]


def test_a_flushed_digest_starts_a_new_cooldown() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1010.0, 0.5, now=10.0)
    policy.due_digests(now=70.0)
    assert policy.next_digest_at() is None
    assert policy.due_digests(now=1000.0) == []
    held = policy.on_anomaly("line1", 1100.0, 0.5, now=100.0)  # within 60 s of the digest at 70
    assert not held.send
    assert policy.next_digest_at() == 130.0


def test_only_sources_whose_cooldown_ended_are_flushed() -> None:
    policy = _policy()
    policy.on_anomaly("line1", 1000.0, 0.5, now=0.0)
    policy.on_anomaly("line1", 1001.0, 0.5, now=1.0)
    policy.on_anomaly("line2", 1030.0, 0.5, now=30.0)
    policy.on_anomaly("line2", 1031.0, 0.5, now=31.0)
    assert [source for source, _ in policy.due_digests(now=60.0)] == ["line1"]
    assert policy.next_digest_at() == 90.0


def test_draining_flushes_everything_held_whether_or_not_its_cooldown_ended() -> None:
    policy = _policy()
    for source in ("line1", "line2"):
        policy.on_anomaly(source, 1000.0, 0.5, now=0.0)
        policy.on_anomaly(source, 1001.0, 0.5, now=1.0)
    due = policy.due_digests(now=2.0, everything=True)
    assert sorted(source for source, _ in due) == ["line1", "line2"]
    assert all(summary["count"] == 1 for _, summary in due)
    assert policy.next_digest_at() is None


# --- which pending alerts go out as one message ---------------------------------------------------
def test_a_lone_anomaly_goes_out_alone() -> None:
    pending = _alerts("anomaly@line1")
    assert _policy().take(pending) == pending


def test_a_burst_of_digest_after_anomalies_of_one_source_goes_out_as_one_message() -> None:
    pending = _alerts(*["anomaly@line1"] * 5)
    assert _policy(digest_after=5).take(pending) == pending


def test_fewer_than_digest_after_anomalies_go_out_one_by_one() -> None:
    pending = _alerts(*["anomaly@line1"] * 4)
    assert _policy(digest_after=5).take(pending) == pending[:1]


def test_a_digest_lists_at_most_max_digest_anomalies() -> None:
    pending = _alerts(*["anomaly@line1"] * 12)
    assert _policy(digest_after=2, max_digest=10).take(pending) == pending[:10]


def test_a_digest_never_overtakes_an_event_of_its_source() -> None:
    pending = _alerts("anomaly@line1", "anomaly@line1", "anomaly@line1", "camera_lost@line1", "anomaly@line1")
    assert _policy(digest_after=2).take(pending) == pending[:3]


def test_an_event_that_stops_a_digest_below_digest_after_leaves_the_head_alone() -> None:
    pending = _alerts("anomaly@line1", "anomaly@line1", "camera_lost@line1", *["anomaly@line1"] * 5)
    assert _policy(digest_after=3).take(pending) == pending[:1]


def test_a_digest_skips_alerts_of_other_sources() -> None:
    pending = _alerts("anomaly@line1", "anomaly@line2", "camera_lost@cam1", "anomaly@line1", "anomaly@line1")
    assert _policy(digest_after=3).take(pending) == [pending[0], pending[3], pending[4]]


def test_an_event_at_the_head_goes_out_alone() -> None:
    pending = _alerts("camera_lost@cam1", *["anomaly@cam1"] * 5)
    assert _policy(digest_after=2).take(pending) == pending[:1]


def test_digest_after_zero_never_merges() -> None:
    pending = _alerts(*["anomaly@line1"] * 20)
    assert _policy(digest_after=0).take(pending) == pending[:1]


# --- properties -----------------------------------------------------------------------------------
_SOURCES = st.sampled_from(["line1", "line2", "cam1"])
# A step: an anomaly of a source (with its score), or the worker looking for due digests, `gap` seconds
# after the step before. Whole seconds keep the sums exact, so "60 s later" is exactly the cooldown's end.
_STEPS = st.lists(st.tuples(st.one_of(_SOURCES, st.just("tick")), st.integers(0, 40), st.floats(0.1, 1.0)),
                  max_size=80)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, cooldown_s=st.sampled_from([0.0, 1.0, 30.0, 60.0]))
def test_no_anomaly_is_lost_each_is_sent_or_counted_in_a_summary(
        steps: list[tuple[str, int, float]], cooldown_s: float) -> None:
    policy = _policy(cooldown_s=cooldown_s)
    now, notified, reported = 0.0, 0, 0
    for what, gap, score in steps:
        now += gap
        if what == "tick":
            reported += sum(summary["count"] for _, summary in policy.due_digests(now))
            continue
        notified += 1
        decision = policy.on_anomaly(what, 1000.0 + now, score, now)
        if decision.send:
            reported += 1 + (decision.suppressed or {"count": 0})["count"]
    reported += sum(summary["count"] for _, summary in policy.due_digests(now, everything=True))
    assert reported == notified


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, cooldown_s=st.sampled_from([1.0, 30.0, 60.0]))
def test_a_source_gets_at_most_one_anomaly_message_per_cooldown(
        steps: list[tuple[str, int, float]], cooldown_s: float) -> None:
    policy = _policy(cooldown_s=cooldown_s)
    now = 0.0
    sent: dict[str, list[float]] = {}
    for what, gap, score in steps:
        now += gap
        if what == "tick":
            for source, _ in policy.due_digests(now):
                sent.setdefault(source, []).append(now)
        elif policy.on_anomaly(what, 1000.0 + now, score, now).send:
            sent.setdefault(what, []).append(now)
    for times in sent.values():
        assert all(later - earlier >= cooldown_s for earlier, later in zip(times, times[1:], strict=False))


_PENDING = st.lists(st.tuples(st.sampled_from(["anomaly", "anomaly", "anomaly", "camera_lost"]), _SOURCES),
                    min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(pending=_PENDING, digest_after=st.integers(0, 6), max_digest=st.integers(1, 8))
def test_a_message_is_the_head_plus_later_anomalies_of_its_source_in_order_up_to_its_next_event(
        pending: list[tuple[str, str]], digest_after: int, max_digest: int) -> None:
    alerts = _alerts(*(f"{kind}@{source}" for kind, source in pending))
    batch = _policy(digest_after=digest_after, max_digest=max_digest).take(alerts)
    head = alerts[0]
    assert batch[0] is head
    assert len(batch) == 1 or digest_after <= len(batch) <= max_digest
    assert [a.seq for a in batch] == sorted(a.seq for a in batch)
    if len(batch) > 1:
        assert all(a.kind == "anomaly" and a.source == head.source for a in batch)
        between = [a for a in alerts if a.source == head.source and head.seq < a.seq < batch[-1].seq]
        assert between == batch[1:-1], "an alert of the head's source was skipped or overtaken"
