"""`proxy.rate_limit`: what the config takes, and what the proxy's token bucket makes of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dfagent.config import parse
from dfagent.errors import ConfigError
from dfagent.proxy import server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(server, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_a_rate_under_one_admits_a_request_every_one_over_rate_seconds(clock):
    throttle = server._Throttle(0.5)
    assert throttle.allow()
    clock.now += 1.9
    assert not throttle.allow()
    clock.now += 0.1
    assert throttle.allow()
    clock.now += 60
    assert throttle.allow()
    assert not throttle.allow(), "the bucket never holds more than one request"


def test_a_rate_of_five_allows_bursts_of_five(clock):
    throttle = server._Throttle(5)
    assert [throttle.allow() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.2
    assert throttle.allow()


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1"])
def test_rate_limit_must_be_a_positive_finite_number(value):
    with pytest.raises(ConfigError) as info:
        parse(f"proxy: {{rate_limit: {value}}}")
    assert [field for field, _ in info.value.problems] == ["proxy.rate_limit"]


def test_a_rate_limit_under_one_is_valid():
    assert parse("proxy: {rate_limit: 0.25}").proxy.rate_limit == 0.25
