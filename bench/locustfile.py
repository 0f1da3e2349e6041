"""Locust users for `POST /v1/explanations` (sync): a weighted mix of methods and image sizes.

Run by `bench/load.py` and by the load smoke test; on its own against a running gateway:

    .venv/bin/python -m locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 \
        -u 40 -r 8 -t 60s --glimpse-pacing 2 --csv load

(from the repository root, which `python -m` puts on the import path).

Each request is recorded under its outcome, not its URL, so that locust's own statistics (and its
`--csv` files) give the figures a load test needs directly: `admitted` (a 2xx whose body is a
valid `ExplainResponse` carrying the map asked for), `refused 429` (counted a success when it
carries `Retry-After`, whose wait the users keep with `--glimpse-retry-after`), and any other
answer as a failure named by its status. The API key, when the gateway requires one, comes from
`LOCUST_GLIMPSE_API_KEY` (kept off the command line).
"""

import random
import time

from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from pydantic import ValidationError

from bench.load_mix import ADMITTED, REFUSED, draw
from schemas.explain import ExplainResponse


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--glimpse-pacing",
        type=float,
        default=0.0,
        help="seconds from the start of one request of a user to its next; 0: back to back",
    )
    parser.add_argument(
        "--glimpse-api-key",
        default="",
        env_var="LOCUST_GLIMPSE_API_KEY",
        help="API key sent as a bearer token; none when empty",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--glimpse-retry-after",
        action="store_true",
        help="after a 429, wait the Retry-After it names before the next request, as a "
        "well-behaved client does; off, the offered rate holds whatever the answers",
    )


class ExplainUser(FastHttpUser):
    """Sends one sync explain request at a time, a kind drawn by the mix's weights, each
    `--glimpse-pacing` seconds (or back to back): users × 1 / pacing is the offered rate as long
    as an answer comes within the pacing."""

    network_timeout = 120.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.pacing = float(options.glimpse_pacing) if options is not None else 0.0
        key = options.glimpse_api_key if options is not None else ""
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retry_after = bool(options.glimpse_retry_after) if options is not None else False
        self.not_before = 0.0
        # A random first phase, so that users spawned together do not send together.
        self.last_start = time.perf_counter() - random.uniform(0.0, self.pacing)

    def wait_time(self) -> float:
        next_start = max(self.last_start + self.pacing, self.not_before)
        return max(0.0, next_start - time.perf_counter())

    @task
    def explain(self) -> None:
        self.last_start = time.perf_counter()
        kind = draw()
        with self.client.post(
            "/v1/explanations",
            json=kind.body(),
            headers=self.headers,
            name=ADMITTED,
            catch_response=True,
        ) as response:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    problem = kind.problem(ExplainResponse.model_validate_json(response.content))
                except ValidationError as exc:
                    problem = f"not an ExplainResponse: {exc.error_count()} errors"
                if problem is not None:
                    response.failure(f"{kind.method}: {problem}")
            elif status == 429:
                response.request_meta["name"] = REFUSED
                retry_after = response.headers.get("Retry-After", "")
                if not retry_after.isdigit():
                    response.failure("429 without Retry-After")
                else:
                    response.success()
                    if self.retry_after:
                        self.not_before = time.perf_counter() + int(retry_after)
            else:
                response.request_meta["name"] = f"status {status}" if status else "no answer"
                response.failure(f"{kind.method}: status {status}")
