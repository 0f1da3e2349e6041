"""The layout is the architecture: schemas ← service, schemas ← workers, and nothing else."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "service", "workers")


def imported_packages(package: str) -> set[str]:
    """Top-level names that any module of `package` imports."""
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("schemas", {"service", "workers", "torch", "redis", "fastapi"}),
        # The gateway reads DICOM headers only: no pixel decoder.
        (
            "service",
            {"workers", "torch", "torchvision", "onnxruntime", "pylibjpeg", "libjpeg"}
            | {"openjpeg", "jpeg_ls", "gdcm"},
        ),
        ("workers", {"service", "fastapi"}),
    ],
)
def test_packages_import_only_what_their_layer_allows(package: str, forbidden: set[str]) -> None:
    assert imported_packages(package) & forbidden == set()


def test_worker_process_does_not_load_the_gateway() -> None:
    code = (
        "import sys, workers.cli, workers.worker; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'service'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports() -> dict[str, set[str]]:
    """Each module of the three packages and the modules of theirs it imports as it loads (its
    top-level statements; a function's own imports run later)."""
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        imported: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                imported.update(submodules & modules or {node.module})
        graph[module_name(path)] = imported & modules
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = top_level_imports()
    assert {"workers.images", "workers.dicom", "workers.decoded"} <= graph.keys()
    finished: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in finished:
            return None
        for imported in sorted(graph[module]):
            if found := cycle_from(imported, [*path, module]):
                return found
        finished.add(module)
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, []))]
    assert cycles == []
