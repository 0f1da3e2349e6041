"""Python client of the Glimpse explanation service: `Client`, `AsyncClient`, typed results."""

from glimpse_client.client import AsyncClient, Client
from glimpse_client.errors import (
    BadImage,
    ClientError,
    Conflict,
    FieldError,
    Forbidden,
    GlimpseError,
    InvalidRequest,
    JobFailed,
    NotFound,
    QueueFull,
    RateLimited,
    ServerError,
    Timeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unreachable,
    UnsupportedMedia,
)
from glimpse_client.results import (
    ExplainResult,
    Explanation,
    Job,
    JobAccepted,
    JobState,
    MethodInfo,
    ModelInfo,
    Prediction,
    Scores,
    Visualization,
)
from glimpse_client.retry import Retry
from glimpse_client.version import VERSION

__version__ = VERSION

__all__ = [
    "AsyncClient",
    "BadImage",
    "Client",
    "ClientError",
    "Conflict",
    "ExplainResult",
    "Explanation",
    "FieldError",
    "Forbidden",
    "GlimpseError",
    "InvalidRequest",
    "Job",
    "JobAccepted",
    "JobFailed",
    "JobState",
    "MethodInfo",
    "ModelInfo",
    "NotFound",
    "Prediction",
    "QueueFull",
    "RateLimited",
    "Retry",
    "Scores",
    "ServerError",
    "Timeout",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "Unreachable",
    "UnsupportedMedia",
    "Visualization",
]
