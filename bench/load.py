"""A load test with locust: the mix of `bench/load_mix.py` at 1× and 2× the stack's capacity.

Starts a private Redis, the gateway (API keys on, result cache off, queue limit `--queue-limit`
per model) and `--workers` workers on the demo model, sends one request of each kind to warm it,
then runs locust headless on `bench/locustfile.py`, as a child process, three times:

1. the capacity: `--capacity-users` users sending back to back for `--capacity-seconds` (a closed
   loop, fewer users than the queue limit, so nothing is refused): locust's rate of admitted
   requests, one map each;
2. 1× and 3. `--factor` × that capacity: each user sends a request every `--pacing` s (raised to
   twice the time `--queue-limit` jobs take at capacity, so that admitted answers come within
   it), as many users as the rate needs, spawned over `--ramp` s; statistics are reset when the
   ramp ends and cover the `--seconds` after it.

For 1× and 2×, prints the admitted (2xx) requests' p50 / p95 / p99, the share answered 429 and
those answers' p50 / p99, the errors (5xx, invalid bodies, no answer), and the ratio of admitted
latency at 2× to that at 1×. Locust's percentiles are its own (rounded to two significant
digits); its CSV files are kept in `--csv-dir`.

Run it from the repository root as a module, `.venv/bin/python -m bench.load`, so that it and
the locustfile find `bench.load_mix`."""

import argparse
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.load_mix import ADMITTED, MIX, REFUSED
from schemas.explain import ExplainResponse
from service.auth import hash_key
from service.devstack import DevStack, free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 60  # users finish the request in hand when the run ends


@dataclass(frozen=True)
class Outcome:
    """Locust's statistics of one request name: counts and latencies in milliseconds."""

    requests: int
    failures: int
    rate: float  # locust's: requests over the time from the statistics' reset to the last answer
    p50: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True)
class LoadRun:
    """What one locust run measured, read back from its `--csv` files."""

    users: int
    seconds: float
    outcomes: dict[str, Outcome]
    failures: list[dict[str, str]]
    exceptions: list[dict[str, str]]

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes.values())

    @property
    def admitted(self) -> Outcome | None:
        return self.outcomes.get(ADMITTED)

    @property
    def refused(self) -> Outcome | None:
        return self.outcomes.get(REFUSED)

    @property
    def errors(self) -> int:
        """Answers other than a valid 2xx or a 429 with Retry-After, and requests that failed."""
        return sum(outcome.failures for outcome in self.outcomes.values()) + len(self.exceptions)

    @property
    def refused_share(self) -> float:
        refused = self.refused.requests if self.refused else 0
        return refused / self.requests if self.requests else 0.0


def _outcome(row: dict[str, str]) -> Outcome:
    def ms(column: str) -> float:
        value = row[column]
        return float(value) if value not in ("", "N/A") else float("nan")

    return Outcome(
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rate=float(row["Requests/s"]),
        p50=ms("50%"),
        p95=ms("95%"),
        p99=ms("99%"),
        max=ms("Max Response Time"),
    )


@dataclass(frozen=True)
class LoadShape:
    """The load locust offers: `users` users spawned at `spawn_rate` per second, then measured
    for `seconds`; each waits `pacing` s between its requests (0: back to back) and, with
    `retry_after`, waits the Retry-After of a 429 it was given."""

    users: int
    spawn_rate: float
    seconds: float
    pacing: float = 0.0
    retry_after: bool = False


def run_locust(url: str, shape: LoadShape, *, csv_prefix: Path, api_key: str = "") -> LoadRun:
    """Run `bench/locustfile.py` headless against `url` for `shape.seconds` after the users are
    spawned (statistics reset then), and read back its statistics."""
    users, seconds = shape.users, shape.seconds
    ramp = users / shape.spawn_rate
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "-u",
        str(users),
        "-r",
        f"{shape.spawn_rate:g}",
        "-t",
        f"{ramp + seconds:.0f}s",
        "--reset-stats",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "0",
        "--glimpse-pacing",
        f"{shape.pacing:g}",
        *(["--glimpse-retry-after"] if shape.retry_after else []),
    ]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "LOCUST_GLIMPSE_API_KEY": api_key, "PYTHONPATH": path}
    finished = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=ramp + seconds + STOP_TIMEOUT_S + 120,
        check=False,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"locust exited with {finished.returncode}:\n{finished.stderr[-4000:]}")

    def rows(suffix: str) -> list[dict[str, str]]:
        with Path(f"{csv_prefix}_{suffix}.csv").open(newline="") as table:
            return list(csv.DictReader(table))

    # Aggregated is the row without a type; a name seen only before the reset has no requests.
    outcomes = {
        row["Name"]: _outcome(row)
        for row in rows("stats")
        if row["Type"] and int(row["Request Count"])
    }
    return LoadRun(users, seconds, outcomes, rows("failures"), rows("exceptions"))


def report(title: str, run: LoadRun) -> None:
    offered = run.requests / run.seconds
    print(f"{title}: {run.users} users, {offered:.1f} requests/s offered, {run.requests} requests")
    for name, outcome in sorted(run.outcomes.items()):
        print(
            f"  {name:<12} {outcome.requests:>6} ({outcome.requests / run.seconds:5.1f}/s)"
            f"  p50 {outcome.p50:6.0f}"
            f"  p95 {outcome.p95:6.0f}  p99 {outcome.p99:6.0f}  max {outcome.max:6.0f} ms"
            f"  failures {outcome.failures}"
        )
    print(f"  answered 429: {100 * run.refused_share:.1f} %; errors: {run.errors}")
    for failure in run.failures:
        print(f"    {failure['Occurrences']} × {failure['Name']}: {failure['Error']}")
    for exception in run.exceptions:
        print(f"    {exception['Count']} × {exception['Message']}")


def warm(url: str, api_key: str) -> None:
    """One request of each kind of the mix, one after the other, each of them required to come
    back right: the first of a kind takes the gateway's and the worker's cold paths (imports,
    first allocations), which a measurement should not see."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        for kind in MIX:
            answer = client.post("/v1/explanations", json=kind.body())
            if answer.status_code != 200:
                raise RuntimeError(f"{kind.label}: {answer.status_code} {answer.text[:500]}")
            problem = kind.problem(ExplainResponse.model_validate_json(answer.content))
            if problem is not None:
                raise RuntimeError(f"{kind.label}: {problem}")


def secured_stack(root: Path, workers: int, queue_limit: int, device: str) -> tuple[DevStack, str]:
    """A stack with one API key (scope explain) required; the key itself."""
    key = secrets.token_urlsafe(24)
    keys_file = root / "keys.json"
    keys_file.write_text(
        json.dumps({"keys": [{"name": "load", "sha256": hash_key(key), "scopes": ["explain"]}]})
    )
    stack = DevStack(
        port=free_port(),
        workers=workers,
        log_dir=root / "logs",
        env={
            "GLIMPSE_AUTH": "on",
            "GLIMPSE_API_KEYS_FILE": str(keys_file),
            "GLIMPSE_DEVICE": device,
            "GLIMPSE_MODEL_REPOSITORY": str(ROOT / "models"),
            "GLIMPSE_RESULT_CACHE": "off",
            "GLIMPSE_QUEUE_LIMIT": str(queue_limit),
        },
    )
    return stack, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="GLIMPSE_DEVICE of the workers")
    parser.add_argument("--queue-limit", type=int, default=16)
    parser.add_argument("--capacity-users", type=int, default=8)
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--pacing", type=float, default=2.0)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--csv-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.capacity_users >= args.queue_limit:
        parser.error("--capacity-users must stay below --queue-limit, or capacity sees 429s")
    with tempfile.TemporaryDirectory(prefix="glimpse-load-") as scratch:
        csv_dir = args.csv_dir or Path(scratch) / "csv"
        csv_dir.mkdir(parents=True, exist_ok=True)
        stack, key = secured_stack(Path(scratch), args.workers, args.queue_limit, args.device)
        load_before = os.getloadavg()[0]
        print("mix: " + "; ".join(f"{kind.weight} × {kind.label}" for kind in MIX))
        with stack.serving():
            warm(stack.url, key)
            closed = run_locust(
                stack.url,
                LoadShape(
                    users=args.capacity_users,
                    spawn_rate=args.capacity_users,
                    seconds=args.capacity_seconds,
                ),
                csv_prefix=csv_dir / "capacity",
                api_key=key,
            )
            report("capacity (closed loop)", closed)
            if closed.admitted is None or closed.errors:
                raise SystemExit("the capacity run had errors or admitted nothing")
            capacity = closed.admitted.rate
            print(f"capacity: {capacity:.1f} maps/s with {args.workers} worker(s)")
            # An admitted request waits behind at most queue-limit jobs: with twice that time
            # between a user's requests, each user keeps its pace and the offered rate holds.
            pacing = max(args.pacing, 2 * args.queue_limit / capacity)
            print(f"pacing: {pacing:.1f} s between the requests of one user")
            runs: dict[float, LoadRun] = {}
            for factor in (1.0, args.factor):
                users = max(1, round(factor * capacity * pacing))
                runs[factor] = run_locust(
                    stack.url,
                    LoadShape(
                        users=users,
                        spawn_rate=users / args.ramp,
                        seconds=args.seconds,
                        pacing=pacing,
                    ),
                    csv_prefix=csv_dir / f"load-{factor:g}x",
                    api_key=key,
                )
                report(f"{factor:g}× capacity ({factor * capacity:.1f} requests/s)", runs[factor])
        base, over = runs[1.0].admitted, runs[args.factor].admitted
        if base is not None and over is not None:
            print(
                f"admitted latency at {args.factor:g}× / at 1×: p50 {over.p50 / base.p50:.2f}, "
                f"p95 {over.p95 / base.p95:.2f}, p99 {over.p99 / base.p99:.2f}"
            )
        cores = os.cpu_count()
        print(
            f"machine: {cores} cores; 1-minute load {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after"
        )
        if args.csv_dir is not None:
            print(f"locust's CSV files: {csv_dir}")


if __name__ == "__main__":
    main()
