"""The structure rules, read off the code: the root holds scripts (a ``__main__`` block) and
``CL_loss_function.py``; library code lives in package folders, each of which imports only the
packages its ``__init__`` docstring allows ("May import ``a``, ``b``", or "Imports nothing of the
project"), so every arrow points down; scripts never import one another and library code never
imports a script; no module assigns another module's attributes (settings travel as arguments);
bench scripts do not import bench scripts; nothing below a script's ``main`` reads one of its
settings; tests never reload a module or overwrite a module's setting constants."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from runtime.settings import declared_settings

ROOT = Path(__file__).resolve().parent.parent
NOT_PACKAGES = {"tests", "bench", "docs", "data"}


def packages(root: Path) -> list[Path]:
    """The library's package folders: folders of the root with an ``__init__.py``."""
    return [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in NOT_PACKAGES
            and not d.name.startswith(".") and (d / "__init__.py").is_file()]


def project_files(root: Path) -> list[Path]:
    return (sorted(root.glob("*.py")) + sorted((root / "bench").glob("*.py"))
            + [p for d in packages(root) for p in sorted(d.rglob("*.py"))])


def allowed_imports(package: Path) -> set[str] | None:
    """What a package may import, from its docstring: the ``names`` of its "May import"
    sentence, nothing for "Imports nothing of the project"; None when it says neither."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text("utf-8"))) or ""
    text = " ".join(doc.split())
    if "Imports nothing of the project" in text:
        return set()
    sentence = re.search(r"May import (.*?)\.(?:\s|$)", text)
    return set(re.findall(r"``(\w+)``", sentence.group(1))) if sentence else None


def imported_modules(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, module, alias) of every import: ``import a as b``; ``from a import x`` gives
    (a, None) and, since x may be a module of package a, (a.x, x)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module, None))
            found += [(node.lineno, f"{node.module}.{a.name}", a.asname or a.name)
                      for a in node.names]
    return found


def reads_command_line(source: str) -> bool:
    """A script (a ``__main__`` block) that reads its settings with ``configure``."""
    return "configure(globals()" in source and "__main__" in source


def breaches(root: Path) -> list[str]:
    """Every breach of the rules under ``root`` (a checkout), one line each."""
    files = project_files(root)
    package_names = {d.name for d in packages(root)}
    modules = {p.stem for p in root.glob("*.py")} | package_names
    scripts = {p.stem for p in root.glob("*.py") if "__main__" in p.read_text("utf-8")}
    bench_scripts = {p.stem for p in (root / "bench").glob("*.py")
                     if "__main__" in p.read_text(encoding="utf-8")}
    rules = {d.name: allowed_imports(d) for d in packages(root)}
    found = [f"{name}/__init__.py: its docstring says neither 'May import ``...``' nor "
             f"'Imports nothing of the project'" for name, rule in rules.items() if rule is None]
    for path in files:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, str(path))
        rel = path.relative_to(root)
        package = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in package_names else None
        library = package is not None or (len(rel.parts) == 1 and path.stem not in scripts)
        if len(rel.parts) == 1 and library and path.name != "CL_loss_function.py":
            found.append(f"{rel}: library module at the root (it belongs in a package folder)")
        aliases = set()
        for line, module, alias in imported_modules(tree):
            top = module.split(".")[0]
            if alias is None or "." not in module:
                if path.stem in scripts and len(rel.parts) == 1 and top in scripts \
                        and top != path.stem:
                    found.append(f"{rel}:{line}: script imports script {top}")
                elif library and top in scripts:
                    found.append(f"{rel}:{line}: library module imports script {top}")
                elif package and top in modules and top != package \
                        and top not in (rules[package] or set()):
                    found.append(f"{rel}:{line}: {package} imports {top}, which its "
                                 f"__init__ docstring does not allow")
                if path.parent.name == "bench" and module in bench_scripts:
                    found.append(f"{rel}:{line}: bench script imports bench script {module}")
            if alias and top in modules:
                aliases.add(alias)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                for item in (target.elts if isinstance(target, ast.Tuple | ast.List)
                             else [target]):
                    if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) \
                            and item.value.id in aliases:
                        found.append(f"{rel}:{node.lineno}: assigns {item.value.id}.{item.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "setattr" and node.args \
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases:
                found.append(f"{rel}:{node.lineno}: setattr on module {node.args[0].id}")
        # Settings are the commented constants of a script that reads a command line.
        settings = {name for name, _ in declared_settings(source)} \
            if reads_command_line(source) else set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "main":
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load) \
                            and inner.id in settings:
                        found.append(f"{rel}:{inner.lineno}: {node.name}() reads the setting "
                                     f"{inner.id}")
    script_settings = {p.stem: {name for name, _ in declared_settings(p.read_text("utf-8"))}
                       for p in files if reads_command_line(p.read_text("utf-8"))}
    for path in sorted((root / "tests").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = path.relative_to(root)
        module_of = {alias: module for _, module, alias in imported_modules(tree) if alias}

        def is_setting(alias: str, name: str, module_of: dict[str, str] = module_of) -> bool:
            return name in script_settings.get(module_of.get(alias, ""), set())

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else \
                    getattr(node.func, "id", "")
                if name == "reload":
                    found.append(f"{rel}:{node.lineno}: reloads a module")
                if name == "setattr" and len(node.args) >= 2 \
                        and isinstance(node.args[0], ast.Name) \
                        and isinstance(node.args[1], ast.Constant) \
                        and is_setting(node.args[0].id, str(node.args[1].value)):
                    found.append(f"{rel}:{node.lineno}: overwrites the setting "
                                 f"{node.args[0].id}.{node.args[1].value}")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    for item in (target.elts if isinstance(target, ast.Tuple | ast.List)
                                 else [target]):
                        if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) \
                                and is_setting(item.value.id, item.attr):
                            found.append(f"{rel}:{node.lineno}: overwrites the setting "
                                         f"{item.value.id}.{item.attr}")
    return found


def test_the_checkout_keeps_the_structure_rules():
    assert breaches(ROOT) == []


def test_each_rule_is_caught(tmp_path):
    """A small checkout breaking every rule once: each breach is reported."""
    for folder in ("bench", "tests", "low", "high", "vague"):
        (tmp_path / folder).mkdir()
    main_block = "if __name__ == '__main__':\n    pass\n"
    (tmp_path / "flows.py").write_text(
        "import evaluate\nfrom high import b\n"
        "# --- settings\nEPOCHS = 3  # passes [>= 1]\n# --- end of settings\n"
        "def train():\n    return EPOCHS\n"
        "def main():\n    b.SEED = 1\n    setattr(b, 'K', 2)\n"
        "    return configure(globals()), EPOCHS\n" + main_block)
    (tmp_path / "evaluate.py").write_text("X = 1\n" + main_block)
    (tmp_path / "CL_loss_function.py").write_text("Y = 1\n")
    (tmp_path / "helpers.py").write_text("Z = 1\n")
    (tmp_path / "low" / "__init__.py").write_text('"""Low. Imports nothing of the project."""\n')
    (tmp_path / "low" / "a.py").write_text("from high.b import SEED\n")
    (tmp_path / "high" / "__init__.py").write_text('"""High. May import ``low``."""\n')
    (tmp_path / "high" / "b.py").write_text("from low import a\nimport evaluate\nSEED = 0\n")
    (tmp_path / "vague" / "__init__.py").write_text('"""No rule here."""\n')
    (tmp_path / "bench" / "bench_a.py").write_text(main_block)
    (tmp_path / "bench" / "bench_b.py").write_text("from bench_a import x\n" + main_block)
    (tmp_path / "tests" / "test_x.py").write_text(
        "import importlib\nimport flows\n"
        "def test(monkeypatch):\n    importlib.re" "load(flows)\n"
        "    monkeypatch.setattr(flows, 'EPOCHS', 1)\n    flows.EPOCHS = 2\n"
        "    monkeypatch.setattr(flows, 'train', None)\n")
    assert sorted(breaches(tmp_path)) == sorted([
        "flows.py:1: script imports script evaluate",
        "flows.py:9: assigns b.SEED",
        "flows.py:10: setattr on module b",
        "flows.py:7: train() reads the setting EPOCHS",
        "helpers.py: library module at the root (it belongs in a package folder)",
        "low/a.py:1: low imports high, which its __init__ docstring does not allow",
        "high/b.py:2: library module imports script evaluate",
        "vague/__init__.py: its docstring says neither 'May import ``...``' nor 'Imports "
        "nothing of the project'",
        "bench/bench_b.py:1: bench script imports bench script bench_a",
        "tests/test_x.py:4: reloads a module",
        "tests/test_x.py:5: overwrites the setting flows.EPOCHS",
        "tests/test_x.py:6: overwrites the setting flows.EPOCHS",
    ])


def test_every_package_folder_says_what_lives_there_and_what_it_may_import():
    """The docstring of each package's ``__init__`` is a paragraph, and its import rule is
    readable (what the structure test checks imports against)."""
    found = packages(ROOT)
    assert {d.name for d in found} >= {"runtime", "dataio", "training", "models", "evaluation"}
    for package in found:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text("utf-8")))
        assert doc and len(doc.split()) >= 20, package.name
        assert allowed_imports(package) is not None, package.name
