"""Glimpse against the serving peer users would pick instead: TorchServe 0.12's explanations.

Both servers serve the same torchvision ResNet-50 at 224² (seeded random weights, BatchNorm
calibrated, saved as safetensors) and get the same `--images` distinct 224² RGB PNG images from
`--clients` concurrent clients, each image once, after a warm-up:

- TorchServe 0.12.0, `POST /explanations/resnet50` with the PNG bytes, in a virtual environment
  this script builds once under `.bench/torchserve/venv` (torch and torchvision are the releases
  Glimpse runs on). Its stock `image_classifier` handler answers explanations through
  `VisionHandler.get_insights`: `captum.attr.IntegratedGradients(model).attribute(tensor,
  target=target, n_steps=15)`, Captum's default Gauss-Legendre rule on 15 points, all in one
  batch, with the target read from the request (0 for a bare image body: no prediction forward)
  and the 3×224×224 attribution returned as a JSON list. Its preprocessing is the stock one
  (resize to 256, centre crop 224, ImageNet normalisation). The generated handler subclasses
  `ImageClassifier` and overrides only `BaseHandler._load_pickled_model`, the hook that builds
  the eager model from the archive's model file and `torch.load`s its weights, to load the
  safetensors weights instead: no pickle. One worker, batch size 1 (TorchServe's defaults).
- Glimpse: a private Redis, the gateway and one worker (result cache off, auth off),
  `POST /v1/explanations` with `integrated_gradients` at `steps` 15 and `max_steps` 15 (at or
  below `steps`, no refinement: a fixed 15 intervals), no overlay, scores "none". Its trapezoid
  rule on 15 intervals takes 16 points, and it runs the prediction forward first (the top-1
  target); the completeness gap it reports reads its logits from the path's end points: about
  16⅓ passes' worth of work per map against TorchServe's 15.

Threads: every model process computes with `--threads` torch threads (default: this machine's
cores), set through OMP_NUM_THREADS for Glimpse's worker and TorchServe's backend worker (its
handler logs `torch.get_num_threads()`, printed below); TorchServe's frontend gets
`number_of_netty_threads` and `netty_client_threads` of the same count. Printed: maps/s of each,
the ratio Glimpse / TorchServe at each client count, and the CPU-seconds each server's processes
used (Glimpse: Redis, gateway, worker; TorchServe: the Java frontend and its Python backend). The
clients run in this process on the same cores.

    python -m bench.torchserve_peer [--images 16] [--clients 1 16] [--threads N]
"""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from safetensors.torch import save_file

from bench.harness import calibrated
from service.devstack import DevStack, free_port

ROOT = Path(__file__).resolve().parent.parent

VENV = ROOT / ".bench" / "torchserve" / "venv"
# torch and torchvision are pinned to the releases Glimpse runs on (pyproject.toml), so that both
# servers compute with the same kernels.
REQUIREMENTS = [
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "PyYAML",
    "captum",
    "Pillow",
    "safetensors",
    "torch==2.14.1",
    "torchvision==0.29.1",
]
MODEL = "resnet50"
SIZE = 224
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
STEPS = 15

MODEL_FILE = '''\
"""torchvision's ResNet-50, the architecture the archive's weights belong to."""

from torchvision.models.resnet import Bottleneck, ResNet


class ResNet50(ResNet):
    def __init__(self):
        super().__init__(Bottleneck, [3, 4, 6, 3])
'''

HANDLER_FILE = '''\
"""TorchServe's stock image classifier, with weights loaded from safetensors."""

import importlib
import logging

import torch
from safetensors.torch import load_file
from ts.torch_handler.image_classifier import ImageClassifier

logger = logging.getLogger(__name__)


class SafetensorsImageClassifier(ImageClassifier):
    def _load_pickled_model(self, model_dir, model_file, model_pt_path):
        # BaseHandler's version unpickles the weights with torch.load.
        logger.info("torch threads: %d", torch.get_num_threads())
        model = importlib.import_module(model_file.split(".")[0]).ResNet50()
        model.load_state_dict(load_file(model_pt_path, device=str(self.device)))
        return model
'''


def peer_venv() -> Path:
    """TorchServe's virtual environment, built once; prints how long the build took."""
    stamp = VENV / ".built"
    wanted = "\n".join(REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == wanted:
        return VENV
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    install = subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        sys.exit(f"building the TorchServe venv failed:\n{install.stdout}{install.stderr}")
    stamp.write_text(wanted)
    print(f"built the TorchServe venv in {time.perf_counter() - started:.0f} s", flush=True)
    return VENV


def write_model(folder: Path) -> Path:
    """The calibrated ResNet-50's weights, as safetensors."""
    weights = folder / "model.safetensors"
    state = {
        name: tensor.contiguous() for name, tensor in calibrated(MODEL, SIZE).state_dict().items()
    }
    save_file(state, str(weights))
    return weights


def glimpse_repository(folder: Path, weights: Path) -> Path:
    """A model repository holding the weights as `resnet50` version 1."""
    version = folder / MODEL / "1"
    version.mkdir(parents=True)
    shutil.copy(weights, version / "model.safetensors")
    manifest = {
        "id": MODEL,
        "version": "1",
        "format": "safetensors",
        "architecture": {"factory": "torchvision.models:resnet50", "kwargs": {}},
        "cam_layer": "layer4",
        "labels": [f"class {index}" for index in range(1000)],
        "input": {
            "channels": 3,
            "height": SIZE,
            "width": SIZE,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        },
        "description": "torchvision ResNet-50 with random weights, for the TorchServe benchmark",
    }
    (version / "manifest.json").write_text(json.dumps(manifest))
    return folder


def torchserve_archive(venv: Path, folder: Path, weights: Path) -> Path:
    """`resnet50.mar` in a model store, built by torch-model-archiver from generated files."""
    (folder / "model.py").write_text(MODEL_FILE)
    (folder / "handler.py").write_text(HANDLER_FILE)
    store = folder / "store"
    store.mkdir()
    subprocess.run(
        [
            str(venv / "bin" / "torch-model-archiver"),
            "--model-name",
            MODEL,
            "--version",
            "1.0",
            "--model-file",
            str(folder / "model.py"),
            "--serialized-file",
            str(weights),
            "--handler",
            str(folder / "handler.py"),
            "--export-path",
            str(store),
        ],
        check=True,
    )
    return store


def images(count: int) -> list[bytes]:
    """`count` distinct 224² RGB PNGs: smooth random colour fields with fine noise."""
    rng = np.random.default_rng(16)
    pngs = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=float)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


class TorchServe:
    """A TorchServe 0.12 started from `venv`, stopped by `stop()` (`torchserve --stop`)."""

    def __init__(self, venv: Path, store: Path, home: Path, threads: int) -> None:
        self.venv, self.store, self.home = venv, store, home
        self.port, management, metrics = free_port(), free_port(), free_port()
        self.management_url = f"http://127.0.0.1:{management}"
        self.config = home / "config.properties"
        self.config.write_text(
            textwrap.dedent(
                f"""\
                inference_address=http://127.0.0.1:{self.port}
                management_address={self.management_url}
                metrics_address=http://127.0.0.1:{metrics}
                disable_token_authorization=true
                enable_envvars_config=true
                default_workers_per_model=1
                number_of_netty_threads={threads}
                netty_client_threads={threads}
                install_py_dep_per_model=false
                default_response_timeout=600
                """
            )
        )
        # Its pid file lies in the temporary folder: a folder of its own keeps this instance
        # apart from any other TorchServe on the machine.
        (home / "tmp").mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": str(threads),
            "TMPDIR": str(home / "tmp"),
            "LOG_LOCATION": str(home / "logs"),
            "METRICS_LOCATION": str(home / "logs"),
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "tmp" / ".model_server.pid"

    def command(self, *arguments: str, check: bool = True) -> None:
        subprocess.run(
            [str(self.venv / "bin" / "torchserve"), *arguments],
            env=self.env,
            cwd=self.home,
            check=check,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.command(
            "--start",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(self.store),
            "--models",
            f"{MODEL}={MODEL}.mar",
            "--ts-config",
            str(self.config),
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.management_url}/models/{MODEL}") as answer:
                    workers = json.loads(answer.read())[0]["workers"]
                if workers and all(worker["status"] == "READY" for worker in workers):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"TorchServe not ready after {timeout_s:.0f} s; logs in {self.home}")

    def frontend_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def worker_threads(self) -> str:
        found = re.findall(
            r"torch threads: (\d+)", (self.home / "logs" / "model_log.log").read_text()
        )
        return ", ".join(found) or "not logged"

    def stop(self, timeout_s: float = 60.0) -> None:
        """`torchserve --stop`, then wait until the frontend and its workers have exited."""
        pids = process_tree(self.frontend_pid()) if self.pid_file.exists() else []
        # Unchecked: after a failed start there is nothing to stop, and the failure is the news.
        self.command("--stop", check=False)
        deadline = time.monotonic() + timeout_s
        while any(running(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"TorchServe still running {timeout_s:.0f} s after --stop")
            time.sleep(0.5)


@contextlib.contextmanager
def torchserve(venv: Path, store: Path, home: Path, threads: int) -> Iterator[TorchServe]:
    server = TorchServe(venv, store, home, threads)
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        server.stop()


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    pids = [pid]
    for parent in pids:
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError):  # a thread or process that just ended
                pids.extend(int(child) for child in (task / "children").read_text().split())
    return pids


def running(pid: int) -> bool:
    """The process `pid` exists and has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time the processes `pids` and their live descendants used so far."""
    total = 0
    for pid in {p for root in pids for p in process_tree(root)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


Send = Callable[[httpx.AsyncClient, bytes], Awaitable[httpx.Response]]


async def send_torchserve(client: httpx.AsyncClient, png: bytes) -> httpx.Response:
    return await client.post(
        f"/explanations/{MODEL}", content=png, headers={"Content-Type": "application/octet-stream"}
    )


async def send_glimpse(client: httpx.AsyncClient, png: bytes) -> httpx.Response:
    return await client.post(
        "/v1/explanations",
        params={"timeout": 300},
        json={
            "model": MODEL,
            "image": base64.b64encode(png).decode(),
            "methods": ["integrated_gradients"],
            "params": {"integrated_gradients": {"steps": STEPS, "max_steps": STEPS}},
            "output": {"overlay": False, "scores": "none"},
        },
    )


async def rate(url: str, send: Send, pngs: list[bytes], clients: int) -> float:
    """Maps per second of wall time, `clients` concurrent clients sending each image once."""
    pending = list(range(len(pngs)))

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=1200) as client:
            while pending:
                answer = await send(client, pngs[pending.pop()])
                answer.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return len(pngs) / (time.perf_counter() - started)


def measure(
    url: str, send: Send, pngs: list[bytes], clients: int, pids: list[int]
) -> tuple[float, float]:
    """Maps/s and the CPU-seconds the servers' processes `pids` used for them."""
    before = cpu_seconds(pids)
    maps_per_s = asyncio.run(rate(url, send, pngs, clients))
    return maps_per_s, cpu_seconds(pids) - before


def load_average(when: str) -> str:
    """The machine's load, to show whether other work shared its cores during the run."""
    one, five, _ = os.getloadavg()
    return f"load average {when}: {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    venv = peer_venv()
    print(load_average("before"), flush=True)
    pngs = images(args.images)
    warm = pngs[: min(4, len(pngs))]
    with tempfile.TemporaryDirectory(prefix="torchserve-peer-") as scratch:
        folder = Path(scratch)
        weights = write_model(folder)
        store = torchserve_archive(venv, folder, weights)
        (folder / "home").mkdir()
        stack = DevStack(
            port=free_port(),
            env={
                "GLIMPSE_AUTH": "off",
                "GLIMPSE_DEVICE": "cpu",
                "GLIMPSE_MODEL_REPOSITORY": str(glimpse_repository(folder / "models", weights)),
                "GLIMPSE_RESULT_CACHE": "off",
                "OMP_NUM_THREADS": str(args.threads),
            },
        )
        with torchserve(venv, store, folder / "home", args.threads) as peer, stack.serving():
            print(
                f"ResNet-50 at {SIZE}², Integrated Gradients at {STEPS} steps, {args.images} "
                f"images; torch threads: Glimpse worker {args.threads}, TorchServe worker "
                f"{peer.worker_threads()} (netty threads {args.threads})",
                flush=True,
            )
            glimpse_pids = [p.pid for p in stack.processes]
            if stack.redis_pid is not None:
                glimpse_pids.append(stack.redis_pid)
            servers = [
                ("TorchServe", peer.url, send_torchserve, [peer.frontend_pid()]),
                ("Glimpse", stack.url, send_glimpse, glimpse_pids),
            ]
            for _, url, send, _ in servers:
                asyncio.run(rate(url, send, warm, len(warm)))
            for clients in args.clients:
                figures = {
                    name: measure(url, send, pngs, clients, pids)
                    for name, url, send, pids in servers
                }
                (peer_rate, peer_cpu), (own_rate, own_cpu) = figures.values()
                print(
                    f"{clients:3d} clients: Glimpse {own_rate:.3f} maps/s, TorchServe "
                    f"{peer_rate:.3f} maps/s, Glimpse / TorchServe {own_rate / peer_rate:.2f}   "
                    f"CPU-s: Glimpse {own_cpu:.1f}, TorchServe {peer_cpu:.1f} "
                    f"({own_cpu / len(pngs):.1f} and {peer_cpu / len(pngs):.1f} a map)",
                    flush=True,
                )
    print(load_average("after"), flush=True)


if __name__ == "__main__":
    main()
