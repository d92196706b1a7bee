"""The structure rules, read off the code: stage scripts never import one another, no module
assigns another module's attributes (settings travel as arguments), bench scripts do not import
bench scripts, nothing below a script's ``main`` reads one of its settings, and tests never reload
a module or overwrite a module's setting constants."""

from __future__ import annotations

import ast
from pathlib import Path

from settings import declared_settings

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"extract_generation_embeddings", "plot_generation_clusters", "encoder_models",
          "plan1_gan_training", "plan2_gan_training", "flows", "evaluate", "train_small_clip",
          "self_consuming_loop"}


def project_files(root: Path) -> list[Path]:
    return sorted(root.glob("*.py")) + sorted((root / "bench").glob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, module, alias) of every import: ``import a as b`` and ``from a import x``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module, None))
    return found


def breaches(root: Path) -> list[str]:
    """Every breach of the rules under ``root`` (a checkout), one line each."""
    files = project_files(root)
    modules = {p.stem for p in files}
    bench_scripts = {p.stem for p in (root / "bench").glob("*.py")
                     if "__main__" in p.read_text(encoding="utf-8")}
    found = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, str(path))
        rel = path.relative_to(root)
        aliases = set()
        for line, module, alias in imported_modules(tree):
            if path.stem in STAGES and module in STAGES and module != path.stem:
                found.append(f"{rel}:{line}: stage imports stage {module}")
            if path.parent.name == "bench" and module in bench_scripts:
                found.append(f"{rel}:{line}: bench script imports bench script {module}")
            if alias and module.split(".")[0] in modules:
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
            if "configure(globals()" in source else set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "main":
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Load) \
                            and inner.id in settings:
                        found.append(f"{rel}:{inner.lineno}: {node.name}() reads the setting "
                                     f"{inner.id}")
    script_settings = {p.stem: {name for name, _ in declared_settings(p.read_text("utf-8"))}
                       for p in files if "configure(globals()" in p.read_text("utf-8")}
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
    (tmp_path / "bench").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "flows.py").write_text(
        "import evaluate\nimport metrics\n"
        "EPOCHS = 3  # passes [>= 1]\n"
        "def train():\n    return EPOCHS\n"
        "def main():\n    metrics.SEED = 1\n    setattr(metrics, 'K', 2)\n"
        "    return configure(globals()), EPOCHS\n")
    (tmp_path / "evaluate.py").write_text("X = 1\n")
    (tmp_path / "metrics.py").write_text("SEED = 0\n")
    (tmp_path / "bench" / "bench_a.py").write_text("if __name__ == '__main__':\n    pass\n")
    (tmp_path / "bench" / "bench_b.py").write_text(
        "from bench_a import x\nif __name__ == '__main__':\n    pass\n")
    (tmp_path / "tests" / "test_x.py").write_text(
        "import importlib\nimport flows\n"
        "def test(monkeypatch):\n    importlib.re" "load(flows)\n"
        "    monkeypatch.setattr(flows, 'EPOCHS', 1)\n    flows.EPOCHS = 2\n"
        "    monkeypatch.setattr(flows, 'train', None)\n")
    assert sorted(breaches(tmp_path)) == sorted([
        "flows.py:1: stage imports stage evaluate",
        "flows.py:7: assigns metrics.SEED",
        "flows.py:8: setattr on module metrics",
        "flows.py:5: train() reads the setting EPOCHS",
        "bench/bench_b.py:1: bench script imports bench script bench_a",
        "tests/test_x.py:4: reloads a module",
        "tests/test_x.py:5: overwrites the setting flows.EPOCHS",
        "tests/test_x.py:6: overwrites the setting flows.EPOCHS",
    ])
