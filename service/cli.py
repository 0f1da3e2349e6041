"""`glimpse`: the gateway (`serve`), a worker (`worker`), or everything for development (`run`);
`env-table` prints the gateway's settings for docs/deployment.md.

`explain`, `models`, `methods`, `jobs` and `visualize` are the client's (`glimpse explain --help`).
"""

import argparse
import os
import sys

import uvicorn

from schemas.environment import environment_help, markdown_table
from schemas.logs import logging_config
from schemas.settings import SharedSettings
from service.config import Settings, get_settings


def serve(host: str | None, port: int | None, access_log: bool = False) -> None:
    """Run the gateway in `GLIMPSE_GATEWAY_PROCESSES` processes; `access_log` adds a line per
    request (never a body, header or key), as `GLIMPSE_ACCESS_LOG=on` does."""
    if access_log:
        # In the environment, so that every gateway process reads it.
        os.environ["GLIMPSE_ACCESS_LOG"] = "true"
        get_settings.cache_clear()
    settings = get_settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=settings.gateway_processes,
        http="service.http_protocol:HeaderTimeoutProtocol",
        log_level="info",
        # uvicorn's own lines go through the root logger's handler; its access log gives way to
        # `service.request_ids`'s, whose line carries the request id.
        log_config=logging_config(settings.log_format),
        access_log=False,
    )


CLIENT_COMMANDS = ("explain", "models", "methods", "jobs", "visualize")


def hand_to_client(argv: list[str]) -> None:
    """Run a client command in `glimpse_client.cli`, imported only then: the gateway itself
    runs without the client installed."""
    if argv[:1] and argv[0] in CLIENT_COMMANDS:
        try:
            from glimpse_client.cli import main as client_main
        except ModuleNotFoundError:
            sys.exit(f"glimpse {argv[0]} needs the client: pip install ./client")
        sys.exit(client_main(argv, prog="glimpse"))


def main(argv: list[str] | None = None) -> None:
    hand_to_client(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="glimpse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser(
        "serve",
        help="run the HTTP gateway",
        description="Run the HTTP gateway, configured by the environment variables below.",
        epilog=environment_help(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request, as GLIMPSE_ACCESS_LOG=on",
    )
    commands.add_parser("worker", help="run a worker (same as glimpse-worker)")
    commands.add_parser("run", help="Redis + gateway + one worker, for development")
    commands.add_parser(
        "env-table", help="print the gateway's environment variables as a Markdown table"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "env-table":
        print(markdown_table(Settings, SharedSettings))
    elif args.command == "serve":
        serve(args.host, args.port, args.access_log)
    elif args.command == "worker":
        # A separate process image: the gateway package never imports the worker's torch.
        os.execvp("glimpse-worker", ["glimpse-worker", *rest])
    else:
        from service.devstack import run_dev_stack

        sys.exit(run_dev_stack())


if __name__ == "__main__":
    main()
