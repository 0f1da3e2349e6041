"""`glimpse-worker`: serve every model of the repository from Redis streams."""

import argparse
import logging
import logging.config
import socket
import sys
import time
from typing import cast

from redis.exceptions import RedisError

from schemas import keys
from schemas.environment import environment_help, markdown_table
from schemas.logs import logging_config
from schemas.sealing import PayloadKeyError, PayloadSealer
from schemas.settings import SharedSettings
from workers.config import WorkerSettings
from workers.redis_connection import worker_redis


def healthcheck(settings: WorkerSettings) -> int:
    """0 when Redis answers and a worker on this host has a fresh heartbeat (for containers)."""
    try:
        redis = worker_redis(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        since = time.time() - 5 * settings.heartbeat_s
        alive = cast(list[bytes], redis.zrangebyscore(keys.LIVE_WORKERS, since, "+inf"))
    except RedisError:
        return 1
    prefix = f"{socket.gethostname()}-".encode()
    return 0 if any(member.startswith(prefix) for member in alive) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="glimpse-worker",
        description=__doc__,
        epilog=environment_help(WorkerSettings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--healthcheck", action="store_true", help="exit 0 if this host's worker is alive"
    )
    parser.add_argument(
        "--env-table",
        action="store_true",
        help="print the environment variables above as a Markdown table",
    )
    args = parser.parse_args(argv)
    if args.env_table:
        print(markdown_table(WorkerSettings, SharedSettings))
        return
    settings = WorkerSettings()
    if args.healthcheck:
        sys.exit(healthcheck(settings))

    logging.config.dictConfig(logging_config(settings.log_format))
    # Libraries' warnings (torch's among them) become log lines in the same format.
    logging.captureWarnings(True)
    log = logging.getLogger("glimpse.worker")
    try:
        sealer = PayloadSealer.from_key_file(settings.payload_key_file)
    except PayloadKeyError as exc:
        log.error("%s", exc)
        sys.exit(2)

    # Imported here so that `--healthcheck`, and a worker without its key, need no torch.
    from workers.repository import ModelLoadError, choose_device, load_repository
    from workers.worker import Worker

    device = choose_device(settings.device)
    started = time.perf_counter()
    try:
        models, failures = load_repository(settings.model_repository, device)
    except ModelLoadError as exc:
        log.error("%s", exc)
        sys.exit(2)
    for failure in failures:
        log.error("model folder %s not served: %s", failure.folder, failure.problem)
    if not models:
        found = f"all {len(failures)} model folder(s) failed to load" if failures else "none found"
        log.error("no model to serve in %s: %s", settings.model_repository, found)
        sys.exit(2)
    log.info(
        "loaded %d model(s) on %s in %.1f s", len(models), device, time.perf_counter() - started
    )
    redis = worker_redis(settings.redis_url, socket_connect_timeout=2, health_check_interval=15)
    worker = Worker(settings, models, redis, sealer, failures)
    worker.install_signal_handlers()
    worker.run()


if __name__ == "__main__":
    main()
