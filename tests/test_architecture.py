"""The folders are the architecture: no import circles between modules or between areas, other
areas go through a package's public API (its `__init__`), and the slim operator image's modules
import without the ML stack.

Imports are read from the source (every `import`, at module level, inside functions and under
`TYPE_CHECKING`): a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "stable_layers": ROOT / "workers" / "stable_layers",
    "stable_layers_operator": ROOT / "operator" / "stable_layers_operator",
}
MAX_LINES = 450  # "no file much over 400 lines"


def _modules() -> dict[str, Path]:
    out = {}
    for top, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = (top, *path.relative_to(folder).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _imports(name: str) -> list[tuple[str, tuple[str, ...], int]]:
    """(module named, names imported, line) of every first-party import in module `name`."""
    path = MODULES[name]
    base = name if name in PACKAGES else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                module = ".".join([*anchor, module] if module else anchor)
            found.append((module, tuple(a.name for a in node.names), node.lineno))
    return [f for f in found if f[0].split(".")[0] in SOURCES]


def _targets(module: str, names: tuple[str, ...]) -> set[str]:
    """The modules an import executes: a submodule named in `from pkg import sub` counts as itself."""
    subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
    rest = [n for n in names if f"{module}.{n}" not in MODULES]
    return subs | ({module} if rest or not names else set())


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name in MODULES:
        for module, names, _ in _imports(name):
            graph[name] |= {t for t in _targets(module, names) if t in MODULES and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def area(module: str) -> str:
    """`stable_layers.policy.sampler` → `stable_layers.policy`; top-level modules are areas of their own."""
    parts = module.split(".")
    return parts[0] if parts[0] == "stable_layers_operator" else ".".join(parts[:2])


def test_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_areas():
    areas: dict[str, set[str]] = defaultdict(set)
    for src, dsts in _graph().items():
        areas[area(src)] |= {area(d) for d in dsts if area(d) != area(src)}
    assert _cycles(areas) == []


def test_other_areas_import_only_a_package_public_api():
    """`from stable_layers.policy import load_policy`, never `stable_layers.policy.model` from
    outside `policy/`; and what is imported is in the package's `__all__`."""
    bad = []
    for name in MODULES:
        for module, names, line in _imports(name):
            owner = area(module)
            if owner == area(name) or owner not in PACKAGES:
                continue
            where = f"{MODULES[name].relative_to(ROOT)}:{line}"
            if module != owner:
                bad.append(f"{where} imports the private module {module}")
                continue
            public = set(getattr(importlib.import_module(owner), "__all__", ()))
            # `from stable_layers import storage` imports a package, which is its public API
            bad += [
                f"{where} imports {owner}.{n}, not in its __all__"
                for n in names
                if n not in public and f"{owner}.{n}" not in PACKAGES
            ]
    assert bad == []


@pytest.mark.parametrize("package", sorted(p for p in PACKAGES if p.count(".") == 1))
def test_every_package_names_its_public_api(package: str):
    mod = importlib.import_module(package)
    exported = getattr(mod, "__all__", None)
    assert exported, f"{package}/__init__.py has no __all__"
    assert [n for n in exported if not hasattr(mod, n)] == []


def test_no_package_named_after_the_old_flat_modules():
    """The areas are packages; the former flat names are gone (no compatibility shims)."""
    flat = SOURCES["stable_layers"]
    old = ["model", "sampler", "sde", "tiny", "train", "collect", "update", "grpo", "checkpoint", "distributed",
           "storage_s3", "rollouts", "metrics", "pretrain_config", "pretrain_vae", "pretrain_dit", "pretrain_card",
           "pretrain_card_text", "pretrain_report"]  # fmt: skip
    assert [n for n in old if (flat / f"{n}.py").exists()] == []
    assert not (ROOT / "operator" / "__init__.py").exists()  # never a package named `operator`


def test_no_source_file_much_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _fresh_import(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_operator_modules_import_without_the_ml_stack():
    """The slim operator image has neither torch/diffusers nor numpy/Pillow: spec, storage (with its
    S3 backend) and the whole operator import in a clean interpreter without any of them."""
    out = _fresh_import(
        "import sys; import stable_layers.spec, stable_layers.storage; "
        "import stable_layers_operator.main, stable_layers_operator.handlers; "
        "stable_layers.storage.open_store('s3://b/p'); "
        "heavy = ('torch', 'diffusers', 'transformers', 'peft', 'numpy', 'PIL'); "
        "bad = [m for m in heavy if m in sys.modules]; assert not bad, bad"
    )
    assert out.returncode == 0, out.stderr


def test_training_callbacks_import_without_torch():
    """The exporter and the rollout recorder run on rank 0 next to the loop but need no torch."""
    out = _fresh_import(
        "import sys; import stable_layers.observability; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    assert out.returncode == 0, out.stderr
