"""`pip install .` gives the kit's commands: gateway-evaluate, gateway-costs, gateway-keys and gateway-admin.

Offline and in seconds: the project is copied to a scratch folder (a build writes build/ and *.egg-info, never
into the checkout) and installed, without its dependencies and without fetching a build backend, into a
throwaway venv that sees this venv's packages (pip, setuptools, the locked dependencies) through a .pth file.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import tomllib
import venv
from pathlib import Path

import gateway_kit

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {  # console script -> what its --help starts with
    "gateway-evaluate": "usage: evaluate_gateway.py",
    "gateway-costs": "usage: analyze_costs.py",
    "gateway-keys": "usage: scripts/gateway_keys.sh",
    "gateway-admin": "usage: gateway-admin",
}


def test_pip_install_gives_the_commands_and_the_version(tmp_path):
    source = tmp_path / "kit"
    source.mkdir()
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "gateway_kit", source / "gateway_kit", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    (Path(site) / "kit-test-parent.pth").write_text(f"import site; site.addsitedir({here!r})\n")

    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, (
        "pip could not build the kit (`make venv` installs the setuptools that "
        f"requirements-dev.txt pins):\n{install.stdout}{install.stderr}"
    )

    for command, usage in COMMANDS.items():
        result = subprocess.run(
            [target / "bin" / command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stdout.startswith(usage), (command, result.stdout + result.stderr)
    probe = (
        "import gateway_kit, importlib.metadata as m; "
        "print(m.version('mlflow-gateway-kit')); print(gateway_kit.__file__)"
    )
    version, module = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert version == gateway_kit.__version__
    assert Path(module).is_relative_to(target), "the commands ran the checkout, not what pip installed"


def test_the_version_is_written_once():
    """pyproject.toml reads it from gateway_kit.__version__; the Helm chart's appVersion names the same release."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "gateway_kit.__version__"}
    chart = (REPO / "charts" / "mlflow-gateway" / "Chart.yaml").read_text()
    assert f'appVersion: "{gateway_kit.__version__}"' in chart


def test_no_python_file_edits_the_import_path():
    """The package is installed (editable in .venv): tests, bench scripts and the CLIs import it, and none puts
    a directory on the import path by hand (tests/ helpers import through pytest's rootdir conftest)."""
    needle = ".".join(("sys", "path"))  # spelt apart: `grep -rn` for it finds nothing, this file included
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "*.py"], capture_output=True, text=True, check=True)
    offenders = [
        f"{name}:{number}"
        for name in tracked.stdout.split()
        if (REPO / name).is_file()
        for number, line in enumerate((REPO / name).read_text().splitlines(), 1)
        if needle in line
    ]
    assert offenders == []
