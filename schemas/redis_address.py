"""Where the Redis is: one server (`redis://`, `rediss://`, `unix://`, as redis-py reads them) or
a primary that Redis Sentinels name (`redis+sentinel://`).

The Sentinel form is `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/primary[/db]`:
the Sentinels to ask (port 26379 unless given), the name they monitor the primary under, and the
database (0 unless given). The credentials are the primary's (and its replicas'); the Sentinels
are asked without any.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT_S = 0.5
"""Seconds a client waits for one Sentinel before it asks the next."""


@dataclass(frozen=True)
class SentinelAddress:
    """A primary found through Sentinels: whom to ask, for which name, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    primary: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def sentinel_options(self) -> dict[str, float]:
        """How a client talks to the Sentinels themselves (redis-py's `sentinel_kwargs`)."""
        return {"socket_connect_timeout": SENTINEL_TIMEOUT_S, "socket_timeout": SENTINEL_TIMEOUT_S}

    def primary_options(self) -> dict[str, Any]:
        """How a client logs in to the primary the Sentinels name (`master_for`'s keywords)."""
        return {"db": self.db, "username": self.username, "password": self.password}


def sentinel_address(url: str) -> SentinelAddress | None:
    """The Sentinel address `url` names; None for any other scheme (a single server's URL).

    ValueError for a `redis+sentinel://` URL without Sentinels or primary name, or with a bad
    port or database.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() != SENTINEL_SCHEME:
        return None
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    sentinels = tuple(_host_port(part) for part in hosts.split(",") if part)
    if not sentinels:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL names at least one Sentinel host")
    primary, _, db = path.strip("/").partition("/")
    if not primary:
        raise ValueError(f"a {SENTINEL_SCHEME}:// URL ends in the primary's name: …/<name>[/db]")
    if db and not db.isdigit():
        raise ValueError(f"the database of a {SENTINEL_SCHEME}:// URL is a number, not {db!r}")
    return SentinelAddress(
        sentinels=sentinels,
        primary=unquote(primary),
        db=int(db or 0),
        username=username,
        password=password,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def _host_port(part: str) -> tuple[str, int]:
    if part.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, tail = part[1:].partition("]")
        port = tail.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if not host:
        raise ValueError(f"a Sentinel in a {SENTINEL_SCHEME}:// URL has no host: {part!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"a Sentinel's port is a number from 1 to 65535, not {port!r}")
    return host, int(port or SENTINEL_PORT)
