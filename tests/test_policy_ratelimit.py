"""Rate limits: token buckets per principal / ip / tool / combination, all-or-nothing
charging, Retry-After values, and key tables that stay bounded under a flood."""

from __future__ import annotations

import pytest
from policyutil import FakeClock

from mcpfast.config import ConfigError
from mcpfast.policy import Principal, RateLimiter, build_policy_config
from mcpfast.policy.principal import KIND_JWT


def limiter(*limits, clock=None, **opts) -> tuple[RateLimiter, FakeClock]:
    clock = clock or FakeClock()
    cfg = build_policy_config({"ratelimit": {"limits": list(limits), **opts}})
    return RateLimiter(cfg.ratelimit, clock=clock), clock


def P(sub="alice", ip="10.0.0.1") -> Principal:
    return Principal(sub, KIND_JWT, f"jwt:i|{sub}", ip)


ALICE, BOB = P("alice"), P("bob", "10.0.0.2")


def test_burst_then_refill_at_rate():
    rl, clock = limiter({"key": "principal", "rate": 2, "burst": 3})
    assert [rl.check(ALICE, "tools/call", "x") for _ in range(3)] == [0.0, 0.0, 0.0]
    retry = rl.check(ALICE, "tools/call", "x")
    assert retry == pytest.approx(0.5)  # one token at 2/s
    clock.advance(0.25)
    assert rl.check(ALICE, "tools/call", "x") == pytest.approx(0.25)
    clock.advance(0.25)
    assert rl.check(ALICE, "tools/call", "x") == 0.0
    assert rl.check(ALICE, "tools/call", "x") > 0
    clock.advance(100)  # refill caps at burst
    assert [rl.check(ALICE, "tools/call", "x") for _ in range(4)].count(0.0) == 3


def test_principals_do_not_share_buckets():
    rl, _ = limiter({"key": ["principal"], "rate": 1, "burst": 1})
    assert rl.check(ALICE, "tools/call") == 0.0
    assert rl.check(ALICE, "tools/call") > 0
    assert rl.check(BOB, "tools/call") == 0.0  # another caller keeps working


def test_ip_dimension():
    rl, _ = limiter({"key": "ip", "rate": 1, "burst": 1})
    assert rl.check(P("a", "1.1.1.1"), "ping") == 0.0
    assert rl.check(P("b", "1.1.1.1"), "ping") > 0  # same address, other principal
    assert rl.check(P("a", "2.2.2.2"), "ping") == 0.0


def test_combined_principal_and_tool():
    rl, _ = limiter({"id": "per-tool", "key": ["principal", "tool"], "rate": 1, "burst": 1, "methods": ["tools/call"]})
    assert rl.check(ALICE, "tools/call", "a") == 0.0
    assert rl.check(ALICE, "tools/call", "b") == 0.0
    assert rl.check(ALICE, "tools/call", "a") > 0
    assert rl.check(BOB, "tools/call", "a") == 0.0
    assert rl.check_limit(ALICE, "tools/call", "a") == (pytest.approx(1.0), "per-tool")
    assert rl.check(ALICE, "tools/list") == 0.0  # methods filter: not counted


def test_tool_and_backend_filters():
    rl, _ = limiter({"key": "principal", "rate": 1, "burst": 1, "tools": ["expensive_*"], "backends": ["gpu"]})
    for _ in range(5):
        assert rl.check(ALICE, "tools/call", "cheap", "gpu") == 0.0
        assert rl.check(ALICE, "tools/call", "expensive_x", "cpu") == 0.0
    assert rl.check(ALICE, "tools/call", "expensive_x", "gpu") == 0.0
    assert rl.check(ALICE, "tools/call", "expensive_y", "gpu") > 0


def test_all_or_nothing_across_limits():
    rl, _clock = limiter(
        {"id": "wide", "key": "principal", "rate": 1, "burst": 5},
        {"id": "narrow", "key": ["principal", "tool"], "rate": 1, "burst": 1},
    )
    assert rl.check_limit(ALICE, "tools/call", "a") == (0.0, None)
    retry, lid = rl.check_limit(ALICE, "tools/call", "a")
    assert lid == "narrow" and retry > 0
    # the refused request charged nothing: "wide" still has 4 tokens
    for t in ("b", "c", "d", "e"):
        assert rl.check(ALICE, "tools/call", t) == 0.0
    assert rl.check_limit(ALICE, "tools/call", "f")[1] == "wide"


def test_per_minute_and_default_burst():
    rl, _clock = limiter({"key": "principal", "per_minute": 6})
    assert rl.check(ALICE, "x") == 0.0
    assert rl.check(ALICE, "x") == pytest.approx(10.0)  # 6/min, burst defaults to max(1, rate)


def test_key_table_is_bounded_and_floods_share_the_overflow_bucket():
    rl, _clock = limiter({"key": "ip", "rate": 1, "burst": 2}, max_keys=100)
    lim = rl.limits[0]
    # a flood of distinct addresses
    results = [rl.check(P("x", f"10.1.{i // 256}.{i % 256}"), "ping") for i in range(10000)]
    assert len(lim.table) == 100
    assert lim.overflowed == 9900
    # the flood beyond the table shares one bucket of burst 2: nearly all refused
    assert results[100:].count(0.0) == 2
    # callers already in the table keep their own buckets
    assert rl.check(P("x", "10.1.0.5"), "ping") == 0.0


def test_idle_buckets_expire():
    rl, clock = limiter({"key": "ip", "rate": 10, "burst": 10}, max_keys=50)
    lim = rl.limits[0]
    for i in range(50):
        rl.check(P("x", f"10.0.0.{i}"), "ping")
    assert len(lim.table) == 50
    clock.advance(0.05)  # not refilled yet
    assert rl.sweep() == 0
    clock.advance(1.0)  # every bucket back at burst: same as absent
    rl.tick(every=0)
    assert len(lim.table) == 0


def test_full_table_sweeps_itself_before_overflowing():
    rl, clock = limiter({"key": "ip", "rate": 10, "burst": 1}, max_keys=10)
    lim = rl.limits[0]
    for i in range(10):
        rl.check(P("x", f"10.0.0.{i}"), "ping")
    clock.advance(5)
    assert rl.check(P("x", "10.9.9.9"), "ping") == 0.0
    assert lim.overflowed == 0 and "10.9.9.9" in lim.table


def test_no_limits_means_no_work():
    rl, _ = limiter()
    assert rl.check(ALICE, "tools/call", "x") == 0.0


@pytest.mark.parametrize(
    "lim,key",
    [
        ({"rate": 1}, "ratelimit.limits[0].key"),
        ({"key": "user", "rate": 1}, "ratelimit.limits[0].key"),  # one name given: no index to name
        ({"key": ["ip", "user"], "rate": 1}, "ratelimit.limits[0].key[1]"),
        ({"key": ["ip", "ip"], "rate": 1}, "ratelimit.limits[0].key"),
        ({"key": "ip"}, "ratelimit.limits[0].rate"),
        ({"key": "ip", "rate": 1, "per_minute": 60}, "ratelimit.limits[0].rate"),
        ({"key": "ip", "rate": 0}, "ratelimit.limits[0].rate"),
        ({"key": "ip", "rate": 1, "burst": 0.5}, "ratelimit.limits[0].burst"),
        ({"key": "ip", "rate": True}, "ratelimit.limits[0].rate"),
    ],
)
def test_config_errors(lim, key):
    with pytest.raises(ConfigError) as ei:
        build_policy_config({"ratelimit": {"limits": [lim]}})
    assert ei.value.key == key
