"""proxy.backend.health without a database: LSN parsing, the lag tracker, the failover rule."""

from __future__ import annotations

import pytest

from proxy.backend.health import Endpoint, LagTracker, choose_primary, format_lsn, parse_lsn
from proxy.config import parse_dsn

# ------------------------------------------------------------------------------------ LSNs


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", 0x16B374D848),
        ("16/b374d848", 0x16B374D848),
        ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
        (" 1/0\n", 1 << 32),
    ],
)
def test_parse_lsn(text: str, value: int) -> None:
    assert parse_lsn(text) == value


@pytest.mark.parametrize("text", ["", "16", "/1", "1/", "x/1", "1/2/3", "100000000/0", "1/-2",
                                  "0x1/2", "1_0/2"])
def test_parse_lsn_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


def test_lsn_order_is_numeric_not_textual() -> None:
    # "9/..." < "10/..." numerically though not as strings; the low half carries into high.
    assert parse_lsn("9/FFFFFFFF") < parse_lsn("A/0") < parse_lsn("10/0")
    assert parse_lsn("0/FFFFFFFF") + 1 == parse_lsn("1/0")


@pytest.mark.parametrize("text", ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/0"])
def test_format_lsn_round_trip(text: str) -> None:
    assert format_lsn(parse_lsn(text)) == text


# ------------------------------------------------------------------------------ LagTracker


def test_no_samples_means_unknown() -> None:
    tracker = LagTracker()
    assert tracker.lag(100, now=5.0) is None


def test_caught_up_replica_has_no_lag() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=1.0)
    tracker.observe(200, at=2.0)
    assert tracker.lag(200, now=10.0) == 0.0
    assert tracker.lag(250, now=10.0) == 0.0  # sampled after the primary moved on


def test_lag_is_age_of_oldest_sample_beyond_replay() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=1.0)
    tracker.observe(200, at=2.0)
    tracker.observe(300, at=3.0)
    # The primary had WAL beyond 150 since t=2 (its 200 sample): 2s at t=4.
    assert tracker.lag(150, now=4.0) == pytest.approx(2.0)
    assert tracker.lag(199, now=4.0) == pytest.approx(2.0)
    # Exactly at a sample's position: that sample is replayed, the next one is not.
    assert tracker.lag(200, now=4.0) == pytest.approx(1.0)
    assert tracker.lag(299, now=4.0) == pytest.approx(1.0)
    assert tracker.lag(300, now=4.0) == 0.0


def test_stuck_replica_lag_grows_with_time() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=0.0)
    tracker.observe(500, at=1.0)  # primary writes once, then is idle
    lags = [tracker.lag(100, now=t) for t in (1.0, 1.5, 2.5, 10.0)]
    assert lags == pytest.approx([0.0, 0.5, 1.5, 9.0])


def test_idle_primary_samples_do_not_reset_the_clock() -> None:
    tracker = LagTracker()
    tracker.observe(500, at=1.0)
    for t in range(2, 10):
        tracker.observe(500, at=float(t))  # same position: nothing new
    assert len(tracker) == 1
    assert tracker.lag(400, now=10.0) == pytest.approx(9.0)


def test_behind_oldest_sample_gives_lower_bound() -> None:
    tracker = LagTracker(max_samples=3)
    for i in range(10):
        tracker.observe(100 * (i + 1), at=float(i))
    assert len(tracker) == 3  # samples at t=7, 8, 9 (positions 800, 900, 1000)
    # Replica at 50: far behind anything remembered; lower bound = now - oldest time.
    assert tracker.lag(50, now=12.0) == pytest.approx(5.0)
    assert tracker.lag(850, now=12.0) == pytest.approx(4.0)


def test_samples_after_now_do_not_count() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=1.0)
    tracker.observe(200, at=5.0)
    # A replica observed at t=4 (before the primary's 200 sample) that replayed 100 is
    # caught up with everything the proxy knew at t=4.
    assert tracker.lag(100, now=4.0) == 0.0
    assert tracker.lag(50, now=4.0) == pytest.approx(3.0)
    assert tracker.lag(100, now=6.0) == pytest.approx(1.0)
    assert tracker.lag(100, now=0.5) is None  # nothing sampled yet at that time


def test_lag_is_never_negative() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=5.0)
    assert tracker.lag(50, now=5.0) == 0.0


def test_primary_going_backwards_restarts_history() -> None:
    tracker = LagTracker()
    tracker.observe(100, at=1.0)
    tracker.observe(900, at=2.0)
    tracker.observe(500, at=3.0)  # another primary (failover) at a lower position
    assert len(tracker) == 1
    assert tracker.lag(500, now=4.0) == 0.0
    assert tracker.lag(400, now=4.0) == pytest.approx(1.0)


def test_reset_and_bounds() -> None:
    tracker = LagTracker(max_samples=2)
    tracker.observe(1, at=1.0)
    tracker.observe(2, at=2.0)
    tracker.observe(3, at=3.0)
    assert len(tracker) == 2
    tracker.reset()
    assert len(tracker) == 0
    assert tracker.lag(0, now=4.0) is None
    with pytest.raises(ValueError):
        LagTracker(max_samples=0)


# ---------------------------------------------------------------------------- failover rule


def _ep(port: int, role: str = "replica", *, up: bool = True,
        in_recovery: bool | None = True) -> Endpoint:
    dsn = parse_dsn(f"postgresql://postgres:pw@127.0.0.1:{port}/app")
    return Endpoint(shard="s0", configured_role=role, dsn=dsn, up=up, in_recovery=in_recovery)


def test_endpoint_address() -> None:
    assert _ep(5433).address == "127.0.0.1:5433"
    v6 = Endpoint("s0", "primary", parse_dsn("postgresql://u@[::1]:5432/db"))
    assert v6.address == "[::1]:5432"


def test_healthy_configured_primary_wins() -> None:
    primary = _ep(1, "primary", in_recovery=False)
    promoted = _ep(2, in_recovery=False)  # split brain: still trust the topology
    assert choose_primary(primary, [primary, promoted]) is primary


def test_unchecked_primary_stays() -> None:
    primary = _ep(1, "primary", in_recovery=None)
    assert choose_primary(primary, [primary, _ep(2, in_recovery=False)]) is primary


@pytest.mark.parametrize(
    "primary",
    [_ep(1, "primary", up=False, in_recovery=None), _ep(1, "primary", in_recovery=True)],
    ids=["down", "in-recovery"],
)
def test_failover_to_the_one_promoted_replica(primary: Endpoint) -> None:
    standby = _ep(2)
    promoted = _ep(3, in_recovery=False)
    assert choose_primary(primary, [primary, standby, promoted]) is promoted


def test_no_failover_without_a_unique_candidate() -> None:
    primary = _ep(1, "primary", up=False, in_recovery=None)
    assert choose_primary(primary, [primary, _ep(2), _ep(3)]) is primary
    two = [_ep(2, in_recovery=False), _ep(3, in_recovery=False)]
    assert choose_primary(primary, [primary, *two]) is primary
    down_promoted = _ep(4, up=False, in_recovery=False)
    assert choose_primary(primary, [primary, down_promoted]) is primary


def test_after_a_failover_writes_stay_on_the_promoted_host() -> None:
    """Split brain after a failover (the old primary is writable again): no flapping back;
    writes return only once the promoted host is demoted or down."""
    primary = _ep(1, "primary", in_recovery=False)
    promoted = _ep(2, in_recovery=False)
    assert choose_primary(primary, [primary, promoted], current=promoted) is promoted
    demoted = _ep(2, in_recovery=True)
    assert choose_primary(primary, [primary, demoted], current=demoted) is primary
    gone = _ep(2, up=False, in_recovery=None)
    assert choose_primary(primary, [primary, gone], current=gone) is primary
    assert choose_primary(primary, [primary, promoted], current=primary) is primary
