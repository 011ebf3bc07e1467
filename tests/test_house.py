"""Rules of the code base that keep it easy to change, checked on the source rather than trusted to review."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SHARED = {"helpers", "transformers_common"}  # the only test-folder modules another file may import


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{alias.name}" if node.module else f"{base}{alias.name}" for alias in node.names)
    return names


def test_production_code_does_not_import_testing_utils():
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "scripts").glob("*.py"), ROOT / "app.py"]
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name
            for name in imported_modules(path)
            if name.endswith("testing_utils") and not name.startswith("transformers")
        )
        for path in files
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_test_modules_share_code_only_through_the_helper_modules():
    local = {path.stem for path in TESTS.glob("*.py")}
    offenders = {}
    for path in TESTS.glob("*.py"):
        imported = {name.split(".")[0] for name in imported_modules(path)} & local
        allowed = set() if path.stem in SHARED | {"conftest"} else SHARED
        if imported - allowed:
            offenders[path.name] = sorted(imported - allowed)
    assert not offenders
