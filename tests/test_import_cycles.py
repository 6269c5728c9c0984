"""No import cycles in the package: a static walk of every module's ``import`` and ``from … import`` statements
(function-local ones included) and of the modules loaded with importlib by name: the commands of ``cli.COMMANDS``
and the lazy exports of ``tokenweight._EXPORTS``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "tokenweight"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir`` (a package is its ``__init__``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports anywhere in its body: each imported module
    itself (``from P import x`` is module ``P.x`` when that is a module, else ``P``), never the parent packages that
    Python also initialises; plus every module named in a ``COMMANDS`` or ``_EXPORTS`` table (what ``cli`` and the
    package import with importlib)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, node.module] if node.module else base)
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                         for alias in node.names)
        elif (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("COMMANDS", "_EXPORTS")
                                                   for t in node.targets)):
            found.update(entry if isinstance(entry, str) else entry[0]
                         for entry in ast.literal_eval(node.value).values())
    return {module for module in found if module in known and module != name}


def import_cycles(package_dir: Path) -> list[list[str]]:
    """Every import cycle among the modules under ``package_dir``, each as ``[a, b, …, a]`` (one per strongly
    connected group of modules: a shortest cycle through its first module)."""
    known = module_names(package_dir)
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    cycles, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        paths, queue = {start: [start]}, [start]
        while queue:
            current = queue.pop(0)
            for target in sorted(graph[current]):
                if target == start:
                    cycle = paths[current] + [start]
                    cycles.append(cycle)
                    seen.update(cycle)
                    queue = []
                    break
                if target not in paths:
                    paths[target] = paths[current] + [target]
                    queue.append(target)
    return cycles


def test_the_package_has_no_import_cycle():
    cycles = import_cycles(PACKAGE_DIR)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_walk_finds_a_cycle_through_a_function_local_import_and_an_importlib_command(tmp_path):
    package = tmp_path / "pkg"
    (package / "commands").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "commands" / "__init__.py").write_text("")
    (package / "cli.py").write_text('COMMANDS = {"go": ("pkg.commands.go", "help"), "help": (None, "x")}\n')
    (package / "commands" / "go.py").write_text("def run():\n    from pkg.cli import COMMANDS\n")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "c.py").write_text("import pkg.a\nfrom pkg import b\n")
    assert import_cycles(package) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.cli", "pkg.commands.go", "pkg.cli"]]
