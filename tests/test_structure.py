"""The package's folders follow the data flow, and its imports keep to it (issue 21 item 3).

Every import of the plugin's own modules, at the top of a file or inside a function, is read from
the source (nothing is imported). A part may import the parts of lower layers and its own; no
import runs from a lower layer up to a higher one, and no two modules import each other in a loop.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fairseq_ecg"

# The house from the ground up: vocabularies; archives and the manifest format; prepared data,
# datasets and metrics; checkpoint reading; models and criterions; tasks and the fairseq patches;
# the programs.
LAYERS = [
    ("errors", "spreadsheet"),
    ("leads", "labels", "normalization", "signal_quality"),
    ("sources", "manifest"),
    ("prepared", "preparation", "synth", "data", "metrics"),
    ("checkpoints",),
    ("models", "criterions"),
    ("tasks", "patches"),
    ("inference",),
    ("predict", "embed", "importer", "deploy", "experiments", "demo", "__init__"),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the plugin's modules it imports (``from . import x`` counts as ``package.x``)."""
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [f"{target}.{alias.name}" for alias in node.names]
                targets = [c for c in candidates if c in modules] or [target]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found[name].update(t for t in targets if t.split(".")[0] == "fairseq_ecg" and t != name)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_has_a_layer():
    parts = {_part(module) for module in _imports()} - {"tables"}
    assert parts == set(RANK), f"a part without a layer (add it to LAYERS): {sorted(parts ^ set(RANK))}"


def test_no_import_runs_up_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in _imports().items() for b in targets
                    if _part(a) != _part(b) and RANK[_part(a)] < RANK[_part(b)])
    assert not upward, upward


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target in graph and not state.get(target):
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module)
