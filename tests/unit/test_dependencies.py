"""Dependencies point one way (DESIGN section 1, STYLE 13):

    gateway -> enclave -> attestation        proxy -> enclave, attestation

The sans-IO dialect code never reaches for a web framework; verifiers never import the
simulated TEE; the server never imports the client (but for the one command-line entry
point that dispatches to both); and no module imports itself back through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "enclave", "attestation", "proxy")
# Imported at module level or inside a function: both are edges.
FORBIDDEN = {
    "attestation": ("gateway", "enclave", "proxy", "starlette", "httpx", "uvicorn"),
    "enclave": ("gateway", "proxy", "starlette", "httpx", "uvicorn"),
    "proxy": ("gateway", "uvicorn.server", "vllm"),
    "gateway": ("proxy",),
}
# The engine adapter speaks vLLM's own types (vLLM builds on Starlette).
ALLOWED = {("enclave.vllm_engine", "starlette"), ("gateway.cli", "proxy")}
SIMULATOR = "attestation.simulated"
MAY_IMPORT_SIMULATOR = {"attestation.providers", "attestation.simulated_release",
                        "gateway.cli_serve", "gateway.fleet_trust"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, module: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.If) and top_level_only:
            continue  # `if TYPE_CHECKING:` blocks are not import-time edges
    return found


def _edges(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, top_level_only=top_level_only)
            for name, path in modules.items()}


def test_no_forbidden_edge() -> None:
    bad = []
    for module, imported in _edges(top_level_only=False).items():
        package = module.split(".")[0]
        for target in imported:
            for prefix in FORBIDDEN[package]:
                hit = target == prefix or target.startswith(prefix + ".")
                allowed = any(module == m and (target == p or target.startswith(p + "."))
                              for m, p in ALLOWED)
                if hit and not allowed:
                    bad.append(f"{module} -> {target}")
    assert bad == []


def test_only_the_simulated_providers_import_the_simulator() -> None:
    importers = {m for m, imported in _edges(top_level_only=False).items()
                 if any(t == SIMULATOR or t.startswith(SIMULATOR + ".") for t in imported)}
    assert importers <= MAY_IMPORT_SIMULATOR


def test_no_import_cycles() -> None:
    modules = set(_modules())
    graph = {m: {t for t in imported if t in modules and t != m}
             for m, imported in _edges(top_level_only=True).items()}
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
