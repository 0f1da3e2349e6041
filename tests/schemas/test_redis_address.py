"""`redis+sentinel://` URLs: what they name, and the ones refused at start-up."""

import pytest
from pydantic import ValidationError

from schemas.redis_address import SentinelAddress, sentinel_address
from schemas.settings import SharedSettings


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380", "unix:///run/redis.sock"]
)
def test_a_single_servers_url_is_no_sentinel_address(url: str) -> None:
    assert sentinel_address(url) is None


def test_a_sentinel_url_names_its_sentinels_primary_database_and_credentials() -> None:
    url = "redis+sentinel://app:p%40ss@s1.example:26380,s2.example,[::1]:26381/glimpse/3"

    assert sentinel_address(url) == SentinelAddress(
        sentinels=(("s1.example", 26380), ("s2.example", 26379), ("::1", 26381)),
        primary="glimpse",
        db=3,
        username="app",
        password="p@ss",
    )


def test_a_password_alone_and_no_database_mean_the_default_user_and_database_0() -> None:
    address = sentinel_address("REDIS+SENTINEL://:secret@10.0.0.1/mymaster")

    assert address == SentinelAddress(
        sentinels=(("10.0.0.1", 26379),), primary="mymaster", password="secret"
    )


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel:///glimpse", "at least one Sentinel"),
        ("redis+sentinel://s1:26379", "primary's name"),
        ("redis+sentinel://s1:26379/", "primary's name"),
        ("redis+sentinel://s1:263x9/glimpse", "not '263x9'"),
        ("redis+sentinel://s1:70000/glimpse", "not '70000'"),
        ("redis+sentinel://s1,:26379/glimpse", "has no host"),
        ("redis+sentinel://s1/glimpse/zero", "not 'zero'"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_the_reason(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        sentinel_address(url)


def test_the_settings_refuse_a_malformed_sentinel_url_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://s1:26379")
    with pytest.raises(ValidationError, match="primary's name"):
        SharedSettings()
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://s1:26379,s2:26379/glimpse")
    assert SharedSettings().redis_url == "redis+sentinel://s1:26379,s2:26379/glimpse"
