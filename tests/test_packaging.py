"""The distribution installs as one ``tomolock`` with three import packages, editable and wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _declared_packages() -> list[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["packages"]


def test_every_source_package_is_declared() -> None:
    # A new subpackage that is not listed would import in an editable install but be missing
    # from the wheel: catch it here.
    mapping = {top: f"tomolock.{top}" for top in ("service", "devices", "plans")}
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found == set(_declared_packages())


def test_editable_import_names() -> None:
    import tomolock.devices
    import tomolock.plans
    import tomolock.service

    assert Path(tomolock.service.__file__).parent == ROOT / "service"
    assert Path(tomolock.devices.__file__).parent == ROOT / "devices"
    assert Path(tomolock.plans.__file__).parent == ROOT / "plans"


def test_wheel_contains_and_imports_packages(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tomolock-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    for pkg in _declared_packages():
        assert pkg.replace(".", "/") + "/__init__.py" in names
    # Import from the unpacked wheel, not from the source tree: -I ignores PYTHONPATH and the
    # CWD, and the explicit path goes first so the editable finder is not consulted.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import tomolock.service.wire, tomolock.devices.sim, tomolock.plans;"
        "print(tomolock.service.wire.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "site")],
        check=True, capture_output=True, text=True,
    ).stdout
    assert out.strip().startswith(str(tmp_path / "site"))


def test_cli_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tomolock.service.cli", "--help"],
        check=True, capture_output=True, text=True,
    ).stdout
    for command in ("demo", "sim", "serve", "align"):
        assert command in out, f"sub-command {command} missing from tomolock --help"
