"""Nothing outside ``weights/`` branches on a scheme's name (issue 11): a scheme is one home, found without a list.

The source tree is parsed (``ast``) and every comparison is checked: none may compare against a registered scheme's
name (``x == "attention"``, ``name in ("column",)``) or test ``weighting`` against anything but ``None`` or the
registry ``SCHEMES``; and no
literal tuple/list/set may hold scheme names (a hidden list of special cases).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tokenweight
from tokenweight.weights import SCHEMES

SOURCE = Path(tokenweight.__file__).parent
WEIGHTS = SOURCE / "weights"
TEXT_PATTERN = re.compile(r'weighting ==|== "attention"|"tidpo"')  # the grep


def _scheme_name(node: ast.AST, names: set[str]) -> bool:
    return isinstance(node, ast.Constant) and node.value in names


def _names_weighting(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "weighting") or \
        (isinstance(node, ast.Attribute) and node.attr == "weighting")


def scheme_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, code)`` of every scheme-name branch in ``source`` (see the module docstring)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = any(_scheme_name(o, names) or (isinstance(o, (ast.Tuple, ast.List, ast.Set)) and
                                                    any(_scheme_name(e, names) for e in o.elts)) for o in operands)
            on_weighting = any(_names_weighting(o) for o in operands) and not any(
                (isinstance(o, ast.Constant) and o.value is None) or (isinstance(o, ast.Name) and o.id == "SCHEMES")
                for o in operands)  # `weighting is None`, `weighting in SCHEMES` (the registry) are no branches
            if named or on_weighting:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(_scheme_name(e, names) for e in node.elts):
            found.append((node.lineno, ast.unparse(node)))
    for number, line in enumerate(source.splitlines(), start=1):
        if TEXT_PATTERN.search(line):
            found.append((number, line.strip()))
    return sorted(set(found))


def test_the_checker_finds_each_kind_of_scheme_branch():
    names = set(SCHEMES)
    assert scheme_branches('if config.weighting == "otpo":\n    pass\n', names)
    assert scheme_branches('if scheme != "attention":\n    pass\n', names)
    assert scheme_branches('ok = name in ("column", "x")\n', names)
    assert scheme_branches('SPECIAL = ("column",)\n', names)
    assert scheme_branches('if args.weighting in wanted:\n    pass\n', names)
    assert scheme_branches('x = {"tidpo": 1}\n', names)  # the text grep
    assert not scheme_branches('if args.weighting is not None:\n    scheme = build_scheme(args.weighting)\n', names)
    assert not scheme_branches('if config.weighting not in SCHEMES:\n    raise UserError("unknown")\n', names)


def test_no_scheme_name_branch_outside_weights():
    names = set(SCHEMES)
    offenders = [f"{path.relative_to(SOURCE.parent)}:{line}: {code}"
                 for path in sorted(SOURCE.rglob("*.py")) if WEIGHTS not in path.parents
                 for line, code in scheme_branches(path.read_text(encoding="utf-8"), names)]
    assert not offenders, "scheme-name branches outside weights/ (move them into the scheme):\n" + "\n".join(offenders)
