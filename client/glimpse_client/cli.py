"""The command line of the Glimpse client: explain images, list models and methods, read jobs.

Exit codes: 0 done; 1 an unexpected error; 2 bad usage (arguments, unreadable files);
3 the service refused the request (a 4xx: bad image, credentials, unknown model or job, invalid
field); 4 the service is unavailable or failed (no connection, 5xx, timeout, 429 after the
retries); 5 `explain` of several images: some failed, the others were written.
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from glimpse_client.batch import ExplainJob, explain_all
from glimpse_client.calls import Target
from glimpse_client.client import AsyncClient, Client
from glimpse_client.errors import (
    ClientError,
    GlimpseError,
    JobFailed,
    QueueFull,
    RateLimited,
)
from glimpse_client.retry import Retry

COMMANDS = ("explain", "models", "methods", "jobs", "visualize")


class Exit(IntEnum):
    OK = 0
    USAGE = 2
    REFUSED = 3
    UNAVAILABLE = 4
    SOME_FAILED = 5


def exit_code(error: GlimpseError) -> Exit:
    """3 for what the caller must change, 4 for what may pass when tried later."""
    if isinstance(error, JobFailed):
        return exit_code(error.cause)
    if isinstance(error, ClientError) and not isinstance(error, RateLimited | QueueFull):
        return Exit.REFUSED
    return Exit.UNAVAILABLE


def parse_target(text: str) -> Target:
    """`top1`…`top5`, a class index, indices separated by commas, or a JSON object."""
    if text.startswith("{"):
        try:
            target: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not a JSON object: {error}") from None
        return target
    if "," in text:
        try:
            return [int(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError("a list of class indices, e.g. 0,2") from None
    return int(text) if text.isdigit() else text


def parse_param(text: str) -> tuple[str, str, object]:
    """`method.name=value`; the value is read as JSON (numbers, true, …), else kept as text."""
    key, equals, value = text.partition("=")
    method, dot, name = key.partition(".")
    if not (equals and dot and method and name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected METHOD.NAME=VALUE")
    try:
        parsed: object = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return method, name, parsed


def _connection_options() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--url", help="the service's base URL (default: $GLIMPSE_URL, else http://127.0.0.1:8000)"
    )
    shared.add_argument("--key", help="API key, sent as Bearer (default: $GLIMPSE_API_KEY)")
    shared.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="retries of a 429 or 503 answer, honouring Retry-After (default: 3)",
    )
    return shared


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = [_connection_options()]

    explain = commands.add_parser(
        "explain",
        parents=shared,
        help="explain images and write their maps",
        description="Explain each IMAGE (PNG, JPEG or DICOM) and write, in DIR/<image stem>/, "
        "response.json and per method and target <method>-<class>.overlay.png, "
        ".heatmap.png (with --heatmap) and .npy (the scores, float32). Several images are "
        "explained concurrently; progress goes to stderr.",
    )
    explain.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    explain.add_argument("--model", "-m", required=True, help="model id (see `models`)")
    explain.add_argument(
        "--method",
        dest="methods",
        action="append",
        metavar="METHOD",
        help="attribution method, repeatable or comma-separated (default: gradcam)",
    )
    explain.add_argument(
        "--target",
        type=parse_target,
        default="top1",
        help="top1…top5, a class index, indices as 0,2, or a JSON region target (default top1)",
    )
    explain.add_argument(
        "--param",
        dest="params",
        action="append",
        type=parse_param,
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method parameter, e.g. smoothgrad.samples=10 (repeatable)",
    )
    explain.add_argument("--output-dir", "-o", type=Path, required=True, metavar="DIR")
    explain.add_argument("--heatmap", action="store_true", help="also write the bare heatmaps")
    explain.add_argument("--no-overlay", action="store_true", help="write no overlays")
    explain.add_argument("--no-scores", action="store_true", help="write no .npy score arrays")
    explain.add_argument(
        "--evaluate",
        action="store_true",
        help="add each map's deletion and insertion AUC and top-10 %% drop to response.json "
        "(22 forward passes a map)",
    )
    explain.add_argument("--colormap", help="jet, viridis, inferno, gray or coolwarm")
    explain.add_argument("--alpha", type=float, help="overlay opacity in [0, 1]")
    explain.add_argument(
        "--size", choices=("original", "model"), help="maps at the image's size or the model's"
    )
    explain.add_argument("--grid", type=int, metavar="N", help="pool the scores to N×N")
    explain.add_argument(
        "--timeout", type=float, metavar="S", help="how long the service waits for each map"
    )
    explain.add_argument(
        "--concurrency",
        "-j",
        type=int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: 4)",
    )

    listing = {"models": "the models the service serves", "methods": "the attribution methods"}
    for name, what in listing.items():
        command = commands.add_parser(name, parents=shared, help=f"list {what}")
        command.add_argument("--json", action="store_true", help="print the JSON answer")

    jobs = commands.add_parser("jobs", help="read or cancel an asynchronous job")
    job_commands = jobs.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    for name, what in {"get": "print the job's state (and result)", "cancel": "cancel it"}.items():
        action = job_commands.add_parser(name, parents=shared, help=what, description=what)
        action.add_argument("job_id", metavar="ID")

    visualize = commands.add_parser(
        "visualize",
        parents=shared,
        help="synthesise the input a class (or a channel) responds to",
        description="Activation maximisation: write the synthesised image as a PNG.",
    )
    visualize.add_argument("--model", "-m", required=True)
    visualize.add_argument("--target", type=int, help="class index")
    visualize.add_argument("--layer", help="layer whose --channel to maximise, instead")
    visualize.add_argument("--channel", type=int)
    visualize.add_argument("--steps", type=int)
    visualize.add_argument("--size", type=int, help="side of the square image, pixels")
    visualize.add_argument("--seed", type=int)
    visualize.add_argument("--timeout", type=float, metavar="S")
    visualize.add_argument("--output", "-o", type=Path, required=True, metavar="FILE")
    return parser


def _retry(args: argparse.Namespace) -> Retry:
    return Retry(attempts=max(0, args.retries))


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Exit:
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    methods = [m.strip() for item in args.methods or ["gradcam"] for m in item.split(",")]
    params: dict[str, dict[str, object]] = {}
    for method, name, value in args.params:
        params.setdefault(method, {})[name] = value
    output: dict[str, object] = {
        "overlay": not args.no_overlay,
        "heatmap": args.heatmap,
        "scores": "none" if args.no_scores else "base64",
    }
    for name in ("colormap", "alpha", "size", "grid"):
        if getattr(args, name) is not None:
            output[name] = getattr(args, name)
    job = ExplainJob(
        model=args.model,
        methods=[m for m in methods if m],
        target=args.target,
        params=params,
        output=output,
        out_dir=args.output_dir,
        timeout=args.timeout,
        evaluate=args.evaluate,
    )

    concurrency = max(1, args.concurrency)

    async def run() -> Exit:
        async with AsyncClient(
            args.url, args.key, retry=_retry(args), max_connections=concurrency
        ) as client:
            outcome = await explain_all(client, args.images, job, concurrency)
        for image, error in outcome.failed.items():
            print(f"{image}: {error}", file=sys.stderr)
        if not outcome.failed:
            return Exit.OK
        if outcome.written:
            return Exit.SOME_FAILED
        return exit_code(next(iter(outcome.failed.values())))

    return asyncio.run(run())


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _models(client: Client, as_json: bool) -> None:
    models = client.models()
    if as_json:
        _print_json([model.model_dump(mode="json") for model in models])
        return
    for model in models:
        workers = f"{model.live_workers} worker{'s' * (model.live_workers != 1)}"
        print(f"{model.id}\t{model.version}\t{model.status}\t{workers}\t{','.join(model.methods)}")


def _methods(client: Client, as_json: bool) -> None:
    methods = client.methods()
    if as_json:
        _print_json([method.model_dump(mode="json") for method in methods])
        return
    for method in methods:
        print(f"{method.id}\t{method.name}\t{method.passes}")


def _visualize(client: Client, args: argparse.Namespace) -> None:
    options = {name: getattr(args, name) for name in ("steps", "size", "seed")}
    result = client.visualize(
        args.model,
        args.target,
        layer=args.layer,
        channel=args.channel,
        timeout=args.timeout,
        **{name: value for name, value in options.items() if value is not None},
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.output, format="PNG")
    target = result.target
    what = (
        f"class {target.class_index} ({target.label})"
        if target.kind == "class"
        else f"{target.layer} channel {target.channel}"
    )
    reached = f"activation {result.activation:.4g}"
    if result.probability is not None:
        reached += f", probability {result.probability:.4g}"
    print(f"wrote {args.output}: {what}, {reached}")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Exit:
    if args.command == "explain":
        return _explain(args, parser)
    with Client(args.url, args.key, retry=_retry(args)) as client:
        if args.command == "models":
            _models(client, args.json)
        elif args.command == "methods":
            _methods(client, args.json)
        elif args.command == "jobs":
            read = client.job if args.job_command == "get" else client.cancel
            _print_json(read(args.job_id).raw)
        else:
            _visualize(client, args)
    return Exit.OK


def main(argv: Sequence[str] | None = None, prog: str = "glimpse-client") -> int:
    """Run one command; returns the exit code (see the module's docstring)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return int(_run(args, parser))
    except GlimpseError as error:
        print(f"{prog} {args.command}: {error}", file=sys.stderr)
        return int(exit_code(error))


if __name__ == "__main__":
    sys.exit(main())
