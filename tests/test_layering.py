"""The layout is the architecture: schemas ← service, schemas ← workers, and nothing else."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
        ("service", {"workers", "torch", "torchvision", "onnxruntime"}),
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
