"""A gateway and a worker on a Redis of their own, serving a test module's model repository.

A module whose models share an id with the session's stack, or whose readiness must wait for its
own worker, runs on one of these: the session's worker never takes its jobs, and `/readyz`
answers only once this worker has loaded the repository.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from service.devstack import DevStack, free_port
from service.redis_server import PrivateRedis


@contextmanager
def private_stack(
    repository: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 180.0,
) -> Iterator[DevStack]:
    """The stack serving `repository` on CPU with auth off, plus `env`, ready within
    `timeout_s`; stopped, with its Redis, after the `with` block."""
    with PrivateRedis() as server:
        running = DevStack(
            port=free_port(),
            redis_url=server.url,
            log_dir=log_dir,
            env={
                "GLIMPSE_AUTH": "off",
                "GLIMPSE_DEVICE": "cpu",
                "GLIMPSE_MODEL_REPOSITORY": str(repository),
                **(env or {}),
            },
        )
        with running.serving(timeout_s=timeout_s):
            yield running
