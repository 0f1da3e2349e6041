"""The client stands alone: no torch, no FastAPI, none of the server's packages."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = {"schemas", "service", "workers", "torch", "torchvision", "fastapi", "redis"}
ALLOWED_THIRD_PARTY = {"httpx", "pydantic", "numpy", "PIL"}


def test_the_package_imports_only_its_dependencies() -> None:
    imported: set[str] = set()
    for path in (ROOT / "client" / "glimpse_client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"glimpse_client"}
    assert third_party <= ALLOWED_THIRD_PARTY, third_party


def test_importing_the_client_and_its_cli_loads_nothing_of_the_server() -> None:
    code = (
        "import json, sys, glimpse_client, glimpse_client.cli; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert loaded & SERVER_SIDE == set()
    assert {"glimpse_client", "httpx", "numpy", "PIL"} <= loaded


def test_the_gateway_cli_loads_the_client_only_for_client_commands() -> None:
    code = "import sys, service.cli; print('glimpse_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_gateway_hands_every_client_command_over() -> None:
    from glimpse_client.cli import COMMANDS

    from service.cli import CLIENT_COMMANDS

    assert CLIENT_COMMANDS == COMMANDS
