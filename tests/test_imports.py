"""The import graph: no cycles among fedgin's modules (fedgin/, kernels/ as fedgin.kernels, bench/ as fedgin.bench),
and the kernels import nothing of fedgin outside fedgin.kernels. Read from the sources (every import statement,
function-level ones included), so a cycle that only a lazy import hides still counts."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fedgin": ROOT / "fedgin", "fedgin.kernels": ROOT / "kernels", "fedgin.bench": ROOT / "bench"}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = (path, path.name == "__init__.py")
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the three packages it imports (a submodule's import of its own package's
    ``__init__`` left out: Python runs that first anyway)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1]) if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                targets = [mod, *(f"{mod}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                target = "fedgin." + target if target.startswith("bench.") else target
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_kernels_import_nothing_of_fedgin_outside_them():
    graph = import_graph()
    outside = {t for m, targets in graph.items() if m.startswith("fedgin.kernels") for t in targets
               if not t.startswith("fedgin.kernels")}
    assert outside == set()
