"""The README's commands from wherever a newcomer clones: a private directory (mode 700,
as root's home is) with a space in its path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.support import ROOT


@pytest.fixture
def private_checkout(tmp_path) -> Path:
    """A copy of the scripts at ``<mode 700 dir>/my checkout``."""
    home = tmp_path / "private home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    checkout = home / "my checkout"
    shutil.copytree(ROOT / "scripts", checkout / "scripts")
    return checkout


def postgres_sh(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SMSERVE_PG_DIR", "SMSERVE_PG_PORT")
    }
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "postgres.sh"), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.root
def test_postgres_sh_from_a_private_path_with_a_space(private_checkout):
    """As root in a checkout the postgres user cannot reach, ``postgres.sh start``
    puts the cluster in a directory of its own that postgres owns, the URL it prints
    connects, and ``stop`` stops the server and removes that directory. (Needs root,
    as ``scripts/test.sh`` does to install PostgreSQL.)"""
    assert os.geteuid() == 0, (
        "run as root: postgres.sh then runs the server as postgres"
    )
    started = postgres_sh(private_checkout, "start")
    pointer = private_checkout / "var" / "postgres" / "cluster-dir"
    try:
        assert started.returncode == 0, started.stderr
        assert "Permission denied" not in started.stderr
        url = started.stdout.strip()
        cluster = Path(pointer.read_text().strip())
        assert cluster.parent == Path("/var/tmp")
        assert cluster.stat().st_uid == int(
            subprocess.run(
                ["id", "-u", "postgres"], capture_output=True, text=True
            ).stdout
        )
        with psycopg.connect(url, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("smserve",)
    finally:
        stopped = postgres_sh(private_checkout, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not pointer.exists()
    assert not cluster.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)
