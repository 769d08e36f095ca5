"""The layout is the architecture: layers import only downward and never in a circle, and
every stage of the pipeline lives in the module the README names, exporting run_<command>.

Every import in bake/ and export/ is read with `ast`: module level, inside functions and
under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top to bottom (the README's "Layout" section): a module may import from its own layer
# and from any layer below it, never from one above.
LAYERS = [
    ("cli", ("export.cli",)),
    ("demo", ("export.demo",)),
    ("publish", ("export.publish",)),
    ("llamacpp", ("export.llamacpp",)),
    ("stages", ("bake.stages",)),
    ("judges", ("bake.judges",)),
    ("runtime", ("bake.runtime",)),
    ("artifacts", ("bake.artifacts",)),
    ("model", ("bake.model", "bake.toy_refuser")),
    ("files", ("bake.files",)),
    ("errors", ("bake.errors", "bake")),
]

# command -> (module, function): each arrow of the data flow and every other command
STAGES = {
    "inspect": ("bake.stages.inspect_model", "run_inspect"),
    "generate": ("bake.stages.generate", "run_generate"),
    "judge": ("bake.stages.judge", "run_judge"),
    "collect": ("bake.stages.collect", "run_collect"),
    "fit": ("bake.stages.fit", "run_fit"),
    "analyze": ("bake.stages.analyze", "run_analyze"),
    "probe": ("bake.stages.probe", "run_probe"),
    "vectors import": ("bake.stages.vectors", "run_vectors_import"),
    "vectors show": ("bake.stages.vectors", "run_vectors_show"),
    "plan": ("bake.stages.plan", "run_plan"),
    "tune": ("bake.stages.tune", "run_tune"),
    "evaluate": ("bake.stages.evaluate", "run_evaluate"),
    "bake": ("bake.stages.bake", "run_bake"),
    "verify": ("bake.stages.verify", "run_verify"),
    "gguf": ("export.llamacpp.writer", "run_gguf"),
    "quantize": ("export.llamacpp.quantize", "run_quantize"),
    "cvec": ("export.llamacpp.cvec", "run_cvec"),
    "chat": ("export.llamacpp.chat", "run_chat"),
    "convert": ("export.llamacpp.convert", "run_convert"),
    "export": ("export.publish.build", "run_export"),
    "push": ("export.publish.push", "run_push"),
    "demo": ("export.demo", "run_demo"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("bake", "export"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every module this file imports, anywhere in it (relative imports resolved)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _layer(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and the README"
    return best[0]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_imports_only_point_down() -> None:
    upward = [
        f"{src} ({LAYERS[_layer(src)][0]}) imports {dst} ({LAYERS[_layer(dst)][0]})"
        for src, targets in _graph().items()
        for dst in targets
        if _layer(dst) < _layer(src)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_bake_never_imports_export() -> None:
    bad = [
        f"{src} imports {dst}"
        for src, targets in _graph().items()
        if src.startswith("bake")
        for dst in targets
        if dst.startswith("export")
    ]
    assert not bad, bad


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("command", sorted(STAGES))
def test_each_stage_module_exports_its_run_function(command: str) -> None:
    module, function = STAGES[command]
    assert callable(getattr(importlib.import_module(module), function, None)), (
        f"`steerbake {command}`: {module} has no {function}"
    )


def test_readme_names_every_layer_and_stage() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout") :]
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            if prefix != "bake":
                path = prefix.replace(".", "/")
                found = re.search(rf"(^|`){re.escape(path)}[/`.\s]", section, re.M)
                assert found, f"README misses {path}"
    for command, (module, function) in STAGES.items():
        assert f"`{module.replace('.', '/')}.py`" in section, f"README misses {module}"
        assert function in section, f"README misses {function} ({command})"


def test_no_module_shadows_a_library() -> None:
    import sys

    shadows = {"gguf", "safetensors", "inspect", "torch", "transformers", "json", "io"}
    shadows |= set(sys.stdlib_module_names) & {"inspect", "io", "json", "types", "abc"}
    bad = [name for name in _modules() if name.rpartition(".")[2] in shadows]
    assert not bad, bad
