"""docker/docker_to_ecr.sh, run with stand-in ``aws`` and ``docker`` executables.

AWS cannot be reached from here, so this is the one place a stand-in is right: each
stand-in records its arguments (and, for ``docker login``, what it read on stdin) and
answers as the real CLI would. PATH holds only the stand-ins and the few tools the script
uses, so a real aws or docker on the machine can never be called.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker" / "docker_to_ecr.sh"
ACCOUNT = "123456789012"
TOKEN = "ecr-password-from-aws"

AWS_STANDIN = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(["aws", *args]) + "\\n")
if args[:3] == ["configure", "get", "region"]:
    region = os.environ.get("STANDIN_REGION", "")
    if not region:
        sys.exit(1)
    print(region)
elif args[:2] == ["sts", "get-caller-identity"]:
    if not os.environ.get("STANDIN_ACCOUNT"):
        print("Unable to locate credentials.", file=sys.stderr)
        sys.exit(255)
    print(os.environ["STANDIN_ACCOUNT"])
elif args[:2] == ["ecr", "describe-repositories"]:
    if os.environ.get("STANDIN_REPO_EXISTS") != "1":
        print("RepositoryNotFoundException", file=sys.stderr)
        sys.exit(254)
    print("{{}}")
elif args[:2] == ["ecr", "create-repository"]:
    print("{{}}")
elif args[:2] == ["ecr", "get-login-password"]:
    print({TOKEN!r})
else:
    print("stand-in aws: unexpected call", args, file=sys.stderr)
    sys.exit(2)
"""

DOCKER_STANDIN = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
entry = ["docker", *args]
if args[:1] == ["info"] and os.environ.get("STANDIN_DOCKER_DOWN") == "1":
    sys.exit(1)
if "--password-stdin" in args:
    entry.append("stdin=" + sys.stdin.read().strip())
with open(os.environ["STANDIN_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
"""

# What the script itself needs besides aws and docker.
TOOLS = ("bash", "dirname", "readlink", "sed")


class Run:
    def __init__(self, result: subprocess.CompletedProcess[str], log: Path) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.calls = (
            [json.loads(line) for line in log.read_text().splitlines()]
            if log.exists()
            else []
        )

    def commands(self, program: str) -> list[list[str]]:
        return [call[1:] for call in self.calls if call[0] == program]


@pytest.fixture
def run_script(tmp_path: Path):
    """Runs the script with a PATH of stand-ins; ``missing`` leaves one of them out."""

    def run(*args: str, missing: str = "", **standin_env: str) -> Run:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for tool in TOOLS:
            link = bin_dir / tool
            if not link.exists():
                link.symlink_to(shutil.which(tool))
        for program, text in (("aws", AWS_STANDIN), ("docker", DOCKER_STANDIN)):
            path = bin_dir / program
            path.unlink(missing_ok=True)
            if program != missing:
                path.write_text(text)
                path.chmod(0o755)
        log = tmp_path / "calls.jsonl"
        log.unlink(missing_ok=True)
        env = {
            "PATH": str(bin_dir),
            "HOME": str(tmp_path),
            "STANDIN_LOG": str(log),
            "STANDIN_REGION": "us-east-1",
            "STANDIN_ACCOUNT": ACCOUNT,
            **standin_env,
        }
        result = subprocess.run(
            ["/usr/bin/env", "bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        return Run(result, log)

    return run


def test_builds_creates_the_repository_logs_in_tags_and_pushes(run_script):
    """With no repository yet: build for linux/amd64 from the repo root, create the
    repository, log in with the password on stdin, tag and push; the URI is printed."""
    run = run_script()
    assert run.returncode == 0, run.stderr
    registry = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
    image = f"{registry}/smserve:latest"
    assert run.calls == [
        ["docker", "info"],
        ["aws", "configure", "get", "region"],
        ["aws", "sts", "get-caller-identity", "--query", "Account", "--output", "text"],
        [
            "docker",
            "build",
            "--platform",
            "linux/amd64",
            "-f",
            str(ROOT / "docker" / "Dockerfile"),
            "-t",
            "smserve:latest",
            str(ROOT),
        ],
        [
            "aws",
            "ecr",
            "describe-repositories",
            "--region",
            "us-east-1",
            "--repository-names",
            "smserve",
        ],
        [
            "aws",
            "ecr",
            "create-repository",
            "--region",
            "us-east-1",
            "--repository-name",
            "smserve",
            "--image-scanning-configuration",
            "scanOnPush=true",
        ],
        ["aws", "ecr", "get-login-password", "--region", "us-east-1"],
        [
            "docker",
            "login",
            "--username",
            "AWS",
            "--password-stdin",
            registry,
            f"stdin={TOKEN}",
        ],
        ["docker", "tag", "smserve:latest", image],
        ["docker", "push", image],
    ]
    assert run.stdout.splitlines()[-1] == image


def test_an_existing_repository_is_not_created_again(run_script):
    """When describe-repositories finds the repository, create-repository is not called."""
    run = run_script(STANDIN_REPO_EXISTS="1")
    assert run.returncode == 0, run.stderr
    assert not [c for c in run.commands("aws") if c[:2] == ["ecr", "create-repository"]]
    assert ["push", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/smserve:latest"] in (
        run.commands("docker")
    )


def test_name_tag_platform_region_and_build_args_are_honoured(run_script):
    """--platform overrides linux/amd64, --region skips `aws configure`, and the name,
    tag and build args end up in the build and the pushed URI."""
    run = run_script(
        "--platform",
        "linux/arm64",
        "--region",
        "eu-west-1",
        "--tag",
        "v1",
        "--build-arg",
        "PIP_INDEX_URL=https://mirror.example/simple",
        "team/smserve",
    )
    assert run.returncode == 0, run.stderr
    assert ["configure", "get", "region"] not in run.commands("aws")
    build = next(c for c in run.commands("docker") if c[0] == "build")
    assert build[1:5] == [
        "--platform",
        "linux/arm64",
        "--build-arg",
        "PIP_INDEX_URL=https://mirror.example/simple",
    ]
    assert "team/smserve:v1" in build
    image = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/team/smserve:v1"
    assert ["push", image] in run.commands("docker")
    assert run.stdout.splitlines()[-1] == image


def test_china_regions_use_the_amazonaws_com_cn_registry(run_script):
    """ECR in cn-* regions lives under amazonaws.com.cn."""
    run = run_script(STANDIN_REGION="cn-north-1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == (
        f"{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn/smserve:latest"
    )


def test_dry_run_prints_every_command_and_runs_only_the_look_ups(run_script):
    """--dry-run prints build, create, login, tag and push instead of running them:
    docker is never called, and aws only for the read-only look-ups."""
    run = run_script("--dry-run")
    assert run.returncode == 0, run.stderr
    assert run.commands("docker") == []
    assert [c[:2] for c in run.commands("aws")] == [
        ["configure", "get"],
        ["sts", "get-caller-identity"],
        ["ecr", "describe-repositories"],
    ]
    printed = [line for line in run.stdout.splitlines() if line.startswith("+ ")]
    registry = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
    for expected in (
        "+ aws configure get region",
        "+ aws sts get-caller-identity",
        "+ docker build --platform linux/amd64 ",
        "+ aws ecr describe-repositories ",
        "+ aws ecr create-repository ",
        "+ aws ecr get-login-password --region us-east-1 | docker login --username "
        f"AWS --password-stdin {registry}",
        f"+ docker tag smserve:latest {registry}/smserve:latest",
        f"+ docker push {registry}/smserve:latest",
    ):
        assert any(line.startswith(expected) for line in printed), (expected, printed)
    assert TOKEN not in run.stdout + run.stderr


@pytest.mark.parametrize("program", ["aws", "docker"])
def test_a_missing_cli_fails_fast_saying_which(run_script, program):
    """Without aws or docker on PATH the script stops before doing anything and names
    the missing program."""
    run = run_script(missing=program)
    assert run.returncode != 0
    assert f"{program}) is not on PATH" in run.stderr or (
        f"{program} is not on PATH" in run.stderr
    )
    assert run.calls == []


def test_unreachable_docker_daemon_fails_fast(run_script):
    """A docker that cannot reach its daemon stops the script before any aws call."""
    run = run_script(STANDIN_DOCKER_DOWN="1")
    assert run.returncode != 0
    assert "docker cannot reach its daemon" in run.stderr
    assert run.commands("aws") == []


def test_missing_credentials_fail_fast_before_building(run_script):
    """When sts get-caller-identity fails the script says credentials are missing and
    builds nothing."""
    run = run_script(STANDIN_ACCOUNT="")
    assert run.returncode != 0
    assert "credentials are not configured" in run.stderr
    assert [c for c in run.commands("docker") if c[0] != "info"] == []


def test_missing_region_fails_fast_with_the_fix(run_script):
    """No region from --region, `aws configure` or AWS_REGION is an error saying how to
    set one."""
    run = run_script(STANDIN_REGION="")
    assert run.returncode != 0
    assert "no AWS region" in run.stderr
    assert "aws configure set region" in run.stderr
    assert not [c for c in run.commands("aws") if c[0] == "sts"]


def test_region_falls_back_to_aws_region_from_the_environment(run_script):
    """With nothing in `aws configure`, AWS_REGION is used."""
    run = run_script(STANDIN_REGION="", AWS_REGION="ap-southeast-2")
    assert run.returncode == 0, run.stderr
    assert ".dkr.ecr.ap-southeast-2.amazonaws.com/" in run.stdout


def test_an_invalid_repository_name_is_refused(run_script):
    """ECR names are lower case: an upper-case name is refused before any call."""
    run = run_script("SMServe")
    assert run.returncode != 0
    assert "not a valid ECR repository name" in run.stderr
    assert run.calls == []


def test_script_is_executable():
    """SageMaker users run it as docker/docker_to_ecr.sh."""
    assert os.access(SCRIPT, os.X_OK)
