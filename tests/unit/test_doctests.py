"""The doctests of every module of the installed packages (what `pytest --doctest-modules` would run over the
checkout, run here over the installed wheel that the other tests use)."""

from __future__ import annotations

import ast
import doctest
import importlib
import io
from pathlib import Path

import pytest

from tests.conftest import PACKAGES


def installed_modules() -> dict[str, Path]:
    """Module name -> installed file, for every module of the packages (``__main__`` would run the CLI)."""
    out = {}
    for top in PACKAGES:
        root = Path(importlib.import_module(top).__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            if path.stem == "__main__" or "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root.parent).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = installed_modules()


def source_doctests(module: object, name: str, source: Path) -> list[doctest.DocTest]:
    """The doctests of a module compiled with mypyc (setup.py): its functions keep no docstrings, so the examples
    are read from the .py installed beside it and run in the compiled module's namespace."""
    parser = doctest.DocTestParser()
    tree = ast.parse(source.read_text(encoding="utf-8"))
    tests = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring and ">>>" in docstring:
                where = f"{name}.{getattr(node, 'name', '')}".rstrip(".")
                globs = dict(vars(module))
                tests.append(parser.get_doctest(docstring, globs, where, str(source), getattr(node, "lineno", 0)))
    return tests


@pytest.mark.parametrize("name", sorted(MODULES))
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    if (module.__file__ or "").endswith(".py"):
        tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    else:
        tests = source_doctests(module, name, MODULES[name])
    examples = sum(len(t.examples) for t in tests)
    if ">>>" in MODULES[name].read_text(encoding="utf-8"):
        assert examples > 0, f"{name} has '>>>' in its source, but no doctest was found in it"
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()


def test_the_packages_have_doctests() -> None:
    with_examples = [n for n, path in MODULES.items() if ">>>" in path.read_text(encoding="utf-8")]
    assert len(with_examples) >= 3, with_examples
