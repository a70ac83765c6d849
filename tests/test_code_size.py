"""The package's code stays in small pieces: no class in ``pyro_relax/`` over 250 lines and no
function over 60 (docstrings included), as the core's design asks."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_relax"
LIMITS = {ast.ClassDef: 250, ast.FunctionDef: 60, ast.AsyncFunctionDef: 60}


def _oversized():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = LIMITS.get(type(node))
            if limit is not None and node.end_lineno - node.lineno + 1 > limit:
                yield "{}:{} {} {} lines".format(path.relative_to(PACKAGE.parent), node.lineno,
                                                 node.name, node.end_lineno - node.lineno + 1)


def test_no_class_or_function_is_too_long():
    assert not list(_oversized())


def test_the_check_can_fail(tmp_path, monkeypatch):
    big = tmp_path / "pyro_relax"
    big.mkdir()
    (big / "m.py").write_text("def f():\n" + "    x = 1\n" * 61)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", big)
    assert list(_oversized()) == ["pyro_relax/m.py:1 f 62 lines"]
