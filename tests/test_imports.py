"""The layering of STYLE.md: core and data are leaves, train talks to other workers only
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
