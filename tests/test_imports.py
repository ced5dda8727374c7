"""The layering CONTRIBUTING.md describes: core and data are leaves, train talks to other workers only
through the group it is handed (no parallel), only parallel and search import ray."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "distnn"
ALLOWED = {
    "core": {"core", "_version"},
    "data": {"data", "core.random", "_version"},  # the keyed RNG shared with dropout
    "train": {"train", "core", "data", "io", "config", "_version"},
    "io": {"io", "core", "_version"},   # network2 JSON import builds a core Network
    "parallel": {"parallel", "train", "core", "data", "io", "config", "_version"},
    "search": {"search", "parallel", "train", "core", "data", "io", "config", "_version"},
}
RAY_USERS = {"parallel", "search"}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[:len(pkg) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
                if not mod.startswith("distnn"):
                    yield "ext:" + mod
                    continue
                mod = mod[len("distnn."):]
            yield mod
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield "ext:" + a.name


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    for f in (ROOT / package).rglob("*.py"):
        for mod in _imports(f):
            if mod.startswith("ext:"):
                assert package in RAY_USERS or not mod.startswith("ext:ray"), \
                    f"{f} imports ray"
                continue
            ok = any(mod == a or mod.startswith(a + ".") for a in ALLOWED[package])
            assert ok, f"{f.relative_to(ROOT)} imports distnn.{mod}"


def test_core_and_data_use_only_numpy_and_stdlib():
    """core: NumPy; data: NumPy, pyarrow (Parquet datasets) and Pillow (the optional
    decoding of encoded images: distnn[images])."""
    import sys
    std = sys.stdlib_module_names
    extra = {"core": ("numpy", "__future__"), "data": ("numpy", "__future__", "pyarrow", "PIL")}
    for package in ("core", "data"):
        for f in (ROOT / package).rglob("*.py"):
            for mod in _imports(f):
                if mod.startswith("ext:"):
                    top = mod[4:].split(".")[0]
                    assert top in std or top in extra[package], f"{f} imports {top}"


def test_config_imports_only_core_and_data():
    for mod in _imports(ROOT / "config.py"):
        assert mod.startswith("ext:") or mod.split(".")[0] in ("core", "data"), mod


def test_ray_is_imported_only_inside_functions_of_parallel_and_search():
    """Importing distnn (and running one worker) must not need Ray: no module-level
    ``import ray`` anywhere."""
    for f in ROOT.rglob("*.py"):
        for node in ast.parse(f.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "ray" for n in names), f


def _module_graph() -> dict[str, set[str]]:
    """distnn module -> the distnn modules it imports anywhere in its text (module level
    or inside functions: a function-level import hides a circle, it does not remove it)."""
    def name(p: Path) -> str:
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    mods = {name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for m, p in mods.items():
        pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if
                                node.module else [])) if node.level else (node.module or "")
                for a in node.names:
                    full = f"{base}.{a.name}"
                    deps.add(full if full in mods else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[m] = {d for d in deps if d in mods and d != m}
    return graph


def test_no_import_circles():
    graph = _module_graph()
    assert len(graph) > 60 and "distnn.parallel.ray_pool" in graph["distnn.parallel.pools"]
    state: dict[str, int] = {}        # 1 on the current path, 2 done

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
