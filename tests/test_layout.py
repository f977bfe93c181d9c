"""The package's layout as the README's module map states it: every module listed, data flowing
one way (no module imports a front end), imports at the top of modules."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nni_adabert"
FRONT_ENDS = {"nni_adabert.cli", "nni_adabert.trial"}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(REPO).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def imported(path: Path, module: str) -> list[tuple[str, ast.AST, list]]:
    """``(imported module, node, enclosing function names)`` for every import in ``path``."""
    package = module.rsplit(".", 1)[0]
    out = []

    def visit(node, functions):
        for child in ast.iter_child_nodes(node):
            is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            inner = functions + [child.name] if is_function else functions
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                out.append((base, child, functions))
            elif isinstance(child, ast.Import):
                out.extend((alias.name, child, functions) for alias in child.names)
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return out


def test_the_readme_module_map_lists_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Module map\s+```(.*?)```", readme, re.S).group(1)
    for name, path in modules().items():
        folder = path.parent.relative_to(PACKAGE)
        listed = path.name in block if folder == Path(".") else re.search(
            rf"^  {folder}/.*?(?=^  \S)", block + "\n  end", re.S | re.M).group(0).count(path.name) > 0
        assert listed, f"{name} is not in the README's module map"


def test_no_package_module_imports_a_front_end():
    for name, path in modules().items():
        if name in FRONT_ENDS:
            continue
        for target, _, _ in imported(path, name):
            assert target not in FRONT_ENDS, f"{name} imports {target}"


def test_package_imports_are_at_the_top_unless_commented():
    """An import of a package module inside a function must say why (a comment right above it)."""
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, node, functions in imported(path, name):
            if functions and target.startswith("nni_adabert") or functions and target.startswith("."):
                above = "\n".join(lines[max(node.lineno - 5, 0): node.lineno - 1])
                assert "#" in above, f"{name}:{node.lineno} imports {target} inside {functions[-1]} without a why"
