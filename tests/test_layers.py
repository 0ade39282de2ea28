"""The package's layers point one way (cli -> recipes -> federation -> build -> training/eval -> models/data
-> config, no circle), and the config loads without torch: a module that reaches up, or a heavy import in config,
fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "fedcollm"
# lowest first; a module may import its own layer and those below it, never one above
LAYERS = [
    {"precision", "memory", "stats"},
    {"config"},  # the one config: it knows no data (task names are data's to check) and defines LoRA specs
    {"data", "models"},
    {"losses", "train", "evaluate", "updates", "runlog", "rounds", "faults", "generate"},
    {"build", "reporting", "plots", "tracking"},
    {"federation"},
    {"recipes"},
    {"cli", "__main__"},
]


def _layer(top: str) -> int:
    (rank,) = [i for i, names in enumerate(LAYERS) if top in names]
    return rank


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first package component) of every fedcollm import in a module, relative or absolute."""
    rel = path.relative_to(PKG)
    here = list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = here[: len(here) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [alias.name for alias in node.names]
            elif node.module and node.module.startswith("fedcollm."):
                names = [node.module.split(".")[1]]
            else:
                continue
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("fedcollm.")]
    return out


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        top = rel.parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        for line, target in _imports(path):
            if _layer(target) > _layer(top):
                wrong.append(f"{rel}:{line} imports {target} (layer {_layer(target)} above {top}'s {_layer(top)})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    # the rule above would pass vacuously if _imports saw nothing: it must see this module's imports
    seen = {t for _, t in _imports(PKG / "federation" / "algorithm.py")}
    assert {"build", "config", "runlog", "reporting"} <= seen
    assert _layer("recipes") > _layer("federation") > _layer("build") > _layer("train") > _layer("models")
    assert _layer("data") > _layer("config")  # config <-> data was a circle: config asked data for task names


def test_the_config_loads_without_torch_or_peft():
    code = ("import sys, fedcollm.config as c; c.load_config(None, []); "
            "heavy = sorted(m for m in ('torch', 'peft', 'transformers', 'flwr') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing fedcollm.config imported {out.stdout.strip()}"
