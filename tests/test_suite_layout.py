"""The test suite's own layout: shared fixtures live in ``conftest.py``, so no test
file imports another and no fixture is copied between files."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TEST_FILES = sorted(TESTS.glob("test_*.py"))
MODULES = {p.stem for p in TEST_FILES} | {"conftest"}


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _fixtures(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr == "fixture":
                    out.add(node.name)
    return out


def test_no_test_file_imports_another():
    offenders = {p.name: sorted(_imported_modules(p) & MODULES - {p.stem}) for p in TEST_FILES}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_conftest_fixtures_are_not_redefined():
    shared = _fixtures(TESTS / "conftest.py")
    assert "one_thread" in shared
    copies = {p.name: sorted(_fixtures(p) & shared) for p in TEST_FILES}
    assert not {k: v for k, v in copies.items() if v}, copies
