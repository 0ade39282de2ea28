"""constraints.txt (the versions `make setup` installs) must stay inside pyproject's ranges.

A pin outside a range would make `make setup` fail to resolve, or test versions a library user can never get;
a direct dependency without a pin would float again (the overnight-release breakage the file exists for).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"torch"}  # the Makefile installs its CPU wheel (TORCH_SPEC) before anything else


def read_pins(text: str) -> dict[str, Version]:
    """``name==version`` lines (comments and blanks skipped); anything else, or a name twice, is an error."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and name.strip() and version.strip(), f"constraints.txt:{number}: not name==version: {raw!r}"
        key = canonicalize_name(name.strip())
        assert key not in pins, f"constraints.txt:{number}: {key} pinned twice"
        pins[key] = Version(version.strip())
    return pins


def direct_requirements() -> list[Requirement]:
    """pyproject's dependencies and every extra `make setup` installs ([test], which pulls [mlflow]'s)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["mlflow"]]


def test_every_direct_dependency_is_pinned_inside_its_pyproject_range():
    pins = read_pins((ROOT / "constraints.txt").read_text())
    checked = 0
    for req in direct_requirements():
        key = canonicalize_name(req.name)
        if key in UNPINNED:
            assert key not in pins, f"{key} is pinned by the Makefile, not constraints.txt"
            continue
        assert key in pins, f"{req} has no pin in constraints.txt"
        assert req.specifier.contains(pins[key], prereleases=True), \
            f"constraints.txt pins {key}=={pins[key]}, outside pyproject's {req}"
        checked += 1
    assert checked >= 10  # the file really was read: flwr, transformers, peft, ... all checked


@pytest.mark.parametrize("text, error", [
    ("peft>=0.21\n", "not name==version"),
    ("peft==0.21.2\nPEFT==0.21.1\n", "pinned twice"),
])
def test_a_malformed_constraints_file_is_refused_with_its_line(text, error):
    with pytest.raises(AssertionError, match=error):
        read_pins(text)


def test_the_wheel_ships_the_presets_and_the_flower_app_and_the_cli_finds_them_installed(tmp_path):
    """Installed from a wheel (not editable), `fedcollm experiment --preset` and `flwr run` still find their files."""
    import subprocess
    import sys
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fedcollm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {p.name for p in (ROOT / "src" / "fedcollm" / "presets").glob("*.yaml")}
    assert presets >= {"cpu-domain.yaml", "cpu-paper.yaml", "cpu-small.yaml", "paper.yaml", "paper-faithful.yaml"}
    assert {f"fedcollm/presets/{p}" for p in presets} | {"fedcollm/flower_app/pyproject.toml"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = ("import fedcollm, fedcollm.config as c; from fedcollm.federation.server_app import flower_app_dir; "
            f"assert fedcollm.__file__.startswith({str(site)!r}), fedcollm.__file__; "
            "assert c.load_preset('cpu-paper').federation.train_size == 750; "
            "assert (flower_app_dir() / 'pyproject.toml').is_file(); print(','.join(c.preset_names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ",".join(sorted(p[: -len(".yaml")] for p in presets))
    cli = subprocess.run([sys.executable, "-c", "import sys; from fedcollm.cli import main; "
                          "sys.exit(main(['experiment', '--preset', 'nope', '--dev-only']))"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert cli.returncode == 2 and "choose from cpu-domain, cpu-paper, cpu-small, paper, paper-faithful" in cli.stderr
