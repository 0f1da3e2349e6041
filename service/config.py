"""Gateway settings, read once from the environment."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from schemas.settings import SharedSettings


class Settings(SharedSettings):
    """Every gateway setting; see the README for the environment variable of each."""

    host: str = Field(default="127.0.0.1", description="address the gateway listens on")
    port: int = Field(default=8000, description="port the gateway listens on")
    auth: bool = Field(default=True, description="require API keys; off trusts every caller")
    api_keys_file: Path | None = Field(
        default=None, description="JSON file of hashed API keys with their scopes and limits"
    )
    sync_timeout_s: float = Field(
        default=30.0, gt=0, description="default wait of POST /v1/explanations"
    )
    max_sync_timeout_s: float = Field(default=300.0, gt=0, description="largest ?timeout= taken")
    result_cache: bool = Field(
        default=True, description="answer identical explain requests by one key from a cache"
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="larger bodies get 413 before they are read"
    )
    max_score_values: int = Field(
        default=4_194_304, gt=0, description="values of one returned score array"
    )
    queue_limit: int = Field(default=1000, gt=0, description="queued jobs per model before 429")
    # Admits all 17 methods at their defaults with top3 on the 128 × 128 demo model (982; 1,094
    # were its CAM layer's channels unknown) and each method alone at its defaults on a 224 × 224
    # one (at most 766); refuses RISE with 8,000 masks (2,000), Integrated Gradients from 1,024
    # steps refined to 4,096 (2,049) or occlusion with a window of 1 (4,096) on the demo model.
    max_job_passes: float = Field(
        default=1800.0,
        gt=0,
        description="a job's largest cost, in passes over a 256 × 256 model input "
        "(`schemas.methods.job_passes`); costlier requests get 422",
    )
    worker_timeout_s: float = Field(default=10.0, gt=0, description="heartbeat age of a live one")
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After of a 503")
    max_jobs_per_key: int = Field(
        default=0,
        ge=0,
        description="explain and visualization jobs of one key queued or running at once; "
        "0: no limit",
    )
    rate_limit_per_minute: int = Field(
        default=0, ge=0, description="explain requests per key and minute; 0: unlimited"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="seconds a connection has to send a request's headers"
    )
    access_log: bool = Field(
        default=False,
        description="log a line per request (method, path, status, duration, request id)",
    )
    gateway_processes: int = Field(
        default=1, ge=1, description="gateway processes (uvicorn workers) sharing the port"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="viewer origins allowed by CORS; none by default"
    )
    redis_replica_acks: int = Field(
        default=0,
        ge=0,
        description="Redis replicas that must hold an admitted job before it is answered, so "
        "that a failover cannot lose it; 0 answers once the primary has it",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
