"""API keys: hashed at rest, presented as `Authorization: Bearer …` or `X-API-Key`."""

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from service.errors import Forbidden, Unauthenticated


class ApiKey(BaseModel):
    """One entry of the keys file; the key itself is never stored, only its SHA-256."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str] = Field(default=["explain"])
    rate_limit_per_minute: int | None = Field(
        default=None, ge=1, description="explain requests per minute; the service default if unset"
    )


class KeysFile(BaseModel):
    keys: list[ApiKey]


@dataclass(frozen=True)
class Principal:
    """Who is calling: owns the jobs it creates."""

    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"This key lacks the `{scope}` scope.")


ANONYMOUS = Principal(name="anonymous", scopes=frozenset({"explain", "admin"}))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Looks presented keys up by hash, in constant time per entry."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @classmethod
    def from_file(cls, path: Path | None) -> "KeyStore":
        if path is None:
            return cls([])
        return cls(KeysFile.model_validate(json.loads(path.read_text())).keys)

    def authenticate(self, bearer: str | None, api_key: str | None) -> Principal:
        """The key's owner; `api_key` (from `X-API-Key`) wins over `bearer` when both came."""
        presented = api_key or bearer
        if not presented:
            raise Unauthenticated(
                "Send an API key as `Authorization: Bearer <key>` or `X-API-Key`."
            )
        digest = hash_key(presented)
        for entry in self._keys:
            if hmac.compare_digest(entry.sha256, digest):
                return Principal(
                    name=entry.name,
                    scopes=frozenset(entry.scopes),
                    rate_limit_per_minute=entry.rate_limit_per_minute,
                )
        raise Unauthenticated("The API key is not known.")
