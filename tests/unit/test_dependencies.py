"""Dependencies point one way (ARCHITECTURE.md):

    cli -> gateway -> enclave -> attestation        cli -> proxy -> enclave, attestation

`cli` is the composition root: the only package that imports both the server side and
the client side, and nothing imports it. The sans-IO dialect code never reaches for a
web framework; verifiers never import the simulated TEE; and no module imports itself
back through others, counting imports inside functions and `TYPE_CHECKING` blocks. There
are no allowed exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "gateway", "enclave", "attestation", "proxy")
# Imported at module level, inside a function or for type checking: all are edges.
FORBIDDEN = {
    "attestation": ("cli", "gateway", "enclave", "proxy", "starlette", "httpx", "uvicorn"),
    "enclave": ("cli", "gateway", "proxy", "starlette", "httpx", "uvicorn"),
    "proxy": ("cli", "gateway", "uvicorn.server", "vllm"),
    "gateway": ("cli", "proxy"),
    "cli": (),
}
SIMULATOR = "attestation.simulated"
# cli.release: `cloister release sign --simulated` signs with the simulated release key
MAY_IMPORT_SIMULATOR = {"attestation.providers", "cli.release", "cli.serve", "gateway.fleet_trust"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _edges() -> dict[str, set[str]]:
    return {name: _imports(path, name) for name, path in _modules().items()}


def test_no_forbidden_edge() -> None:
    bad = []
    for module, imported in _edges().items():
        package = module.split(".")[0]
        for target in imported:
            for prefix in FORBIDDEN[package]:
                if target == prefix or target.startswith(prefix + "."):
                    bad.append(f"{module} -> {target}")
    assert bad == []


def test_only_the_simulated_providers_import_the_simulator() -> None:
    def simulator(name: str) -> bool:
        return name == SIMULATOR or name.startswith(SIMULATOR + ".")

    importers = {m for m, imported in _edges().items()
                 if not simulator(m) and any(simulator(t) for t in imported)}
    assert importers <= MAY_IMPORT_SIMULATOR


def test_no_import_cycles() -> None:
    modules = set(_modules())
    graph = {m: {t for t in imported if t in modules and t != m}
             for m, imported in _edges().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
