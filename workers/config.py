"""Worker settings, read once from the environment."""

import os
import socket
import uuid
from pathlib import Path

from pydantic import Field

from schemas.settings import SharedSettings


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerSettings(SharedSettings):
    """Every worker setting; see the README for the environment variable of each."""

    model_repository: Path = Field(
        default=Path("models"), description="folder of <id>/<version>/ model folders"
    )
    device: str = Field(
        default="auto",
        pattern="^(auto|cpu|cuda(:[0-9]+)?)$",
        description="auto (CUDA when there is one), cpu, cuda or cuda:N",
    )
    worker_id: str = Field(
        default_factory=_worker_id, description="consumer name in Redis; host-pid-random by default"
    )
    max_batch: int = Field(default=8, ge=1, description="jobs read per batch")
    # 0, as Triton's dynamic batcher: jobs that queue while a batch computes still batch
    # together; a wait helps only at moderate load and costs every request about twice itself.
    max_wait_ms: int = Field(default=0, ge=0, description="extra wait to fill a batch")
    block_ms: int = Field(default=1000, ge=1, description="longest wait of one read for jobs")
    heartbeat_s: float = Field(default=2.0, gt=0, description="heartbeat period")
    visibility_timeout_s: float = Field(
        default=60.0, gt=0, description="idle time after which a dead worker's jobs are taken over"
    )
    max_deliveries: int = Field(default=3, ge=1, description="deliveries before a job fails")
    max_job_seconds: float = Field(
        default=300.0,
        gt=0,
        description="compute time of one job before it fails with job-too-long; a batch of "
        "n jobs computed together gets n times as long",
    )
    precision: str = Field(
        default="float32",
        pattern="^(float32|bfloat16|float16)$",
        description="float32, or bfloat16 / float16: passes under autocast, maps in float32",
    )
    max_batch_memory: int = Field(
        default=0,
        ge=0,
        description="bytes one pass of a multi-sample method may keep per device; 0: 16 "
        "images of 224² per pass",
    )
