"""The project's shape: no import cycle anywhere, small modules, and a `pipeline/` made of stage packages."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("svi_model", "pipeline", "flows")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, wherever the import statement stands (in a function, or under
    TYPE_CHECKING: either still ties the two modules together)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = ".".join(part for part in (base if node.level else "", node.module or "") if part)
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in modules and target != name}
    return found


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of every module `path` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.partition(".")[0])
    return names


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from where the walk entered it)."""
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's own `__init__` importing its submodules is how a package shows its surface, not a cycle: the
    submodules' imports of the package are what count. Drop the package → own-submodule edges."""
    return {
        module: {target for target in targets if not target.startswith(module + ".")}
        for module, targets in graph.items()
    }


def test_no_import_cycle_anywhere():
    modules = project_modules()
    graph = package_edges({name: imported_modules(name, path, modules) for name, path in modules.items()})
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_dependency_arrow_points_one_way():
    """flows → pipeline → svi_model: the model code knows nothing of stages, stages nothing of Prefect."""
    modules = project_modules()
    for name, path in modules.items():
        imported = imported_modules(name, path, modules)
        if name.startswith("svi_model"):
            assert not {m for m in imported if m.startswith(("pipeline", "flows"))}, name
        if name.startswith("pipeline"):
            assert not {m for m in imported if m.startswith("flows")}, name
            assert "prefect" not in third_party_imports(path), name


def test_pipeline_is_stage_packages_and_a_few_shared_modules():
    pipeline = ROOT / "pipeline"
    stages = {"retrieve", "storyline", "synthesize", "assemble"}
    assert stages <= {p.name for p in pipeline.iterdir() if (p / "__init__.py").is_file()}
    assert len(list(pipeline.glob("*.py"))) <= 8


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in project_modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}
