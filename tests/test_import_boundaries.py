"""The plugins' import boundaries, read from their source: a validator uses the core's public modules, the
shared toolkit (gate_plugins.toolkit) and another validator only through that validator's package API (its
``__all__``), never another validator's private modules or the CLI's internals."""

from __future__ import annotations

import ast
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
VALIDATORS = ("memorization", "quality", "segmentation")
#: modules of other packages that a command module (not a validator) may use: the CLI's error printer
COMMAND_MODULES = {"bench_cli.py", "cli.py", "demo.py", "init.py"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
    return out


def _violations() -> list[str]:
    found = []
    for path in sorted(PLUGINS.rglob("*.py")):
        own = path.relative_to(PLUGINS).parts[0]
        for line, module, names in _imports(path):
            where = f"{path.relative_to(PLUGINS.parent)}:{line}: {module}"
            parts = module.split(".")
            if parts[0] == "gate" and module == "gate.cli" and path.name not in COMMAND_MODULES:
                found.append(f"{where}: only sub-command modules may use the CLI")
            if parts[0] != "gate_plugins" or len(parts) < 2 or parts[1] in (own, "toolkit"):
                continue
            other = parts[1]
            if other in VALIDATORS and len(parts) > 2:
                found.append(f"{where}: another validator's private module (import from gate_plugins.{other})")
            elif other in VALIDATORS:
                public = _public_api(other)
                private = [n for n in names if n not in public]
                if private:
                    found.append(f"{where}: {', '.join(private)} not in gate_plugins.{other}.__all__")
            if own in VALIDATORS and other == "mri":
                found.append(f"{where}: a validator depends on the demo/CLI package")
    return found


def _public_api(package: str) -> set[str]:
    tree = ast.parse((PLUGINS / package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def test_validators_use_only_the_toolkit_and_each_others_public_api():
    assert _violations() == []


def test_the_boundary_check_sees_a_private_import(tmp_path, monkeypatch):
    """The check itself can fail: a validator module reaching into another's private module is named."""
    fake = tmp_path / "plugins"
    for name in (*VALIDATORS, "toolkit"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text('__all__ = ["Detector"]\n')
    (fake / "quality" / "validator.py").write_text(
        "from gate_plugins.memorization.figures import _png\nfrom gate_plugins.memorization import maths\n"
        "from gate.cli import fail\nfrom gate_plugins.toolkit.figures import png\n")
    monkeypatch.setattr(__import__(__name__), "PLUGINS", fake)
    found = _violations()
    assert len(found) == 3, found
    assert "private module" in found[0] or "private module" in found[1]
    assert any("maths not in gate_plugins.memorization.__all__" in f for f in found)
    assert any("only sub-command modules may use the CLI" in f for f in found)
