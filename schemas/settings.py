"""Settings that the gateway and the workers must agree on, read by both from one definition."""

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.logs import LogFormat
from schemas.redis_address import sentinel_address

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


class SharedSettings(BaseSettings):
    """Read from `GLIMPSE_*` environment variables by the gateway and by every worker."""

    model_config = SettingsConfigDict(env_prefix="GLIMPSE_", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "GLIMPSE_REDIS_URL"),
        description="the Redis that holds the queue, the jobs and the results: one server's "
        "URL, or redis+sentinel://host:26379,host2:26379/name for the primary that Sentinels "
        "watch under that name",
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        gt=0,
        description="pixels of one image (rows × columns × frames), checked before decoding",
    )
    result_ttl_s: int = Field(
        default=3600, gt=0, description="seconds a job's result, and a cached result, is kept"
    )
    payload_key_file: Path | None = Field(
        default=None,
        description="file of the 256-bit key (64 hex digits) that seals every stored image and "
        "result; required",
    )
    dicomweb_servers: Path | None = Field(
        default=None,
        description="JSON file of the DICOMweb servers a request may name in `source` and "
        "`store` (README, DICOMweb); none: no server",
    )
    log_format: LogFormat = Field(
        default="auto",
        description="log lines as json (one object per line) or text; auto: text on a "
        "terminal, else json",
    )

    @field_validator("redis_url")
    @classmethod
    def _readable_redis_url(cls, url: str) -> str:
        sentinel_address(url)  # a malformed Sentinel URL fails at start-up, not at first use
        return url
