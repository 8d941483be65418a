"""Script mode: run the user's training script as SageMaker's scikit-learn container does.

The SageMaker Python SDK's ``SKLearn`` estimator writes ``sagemaker_program`` (the script's
name) and ``sagemaker_submit_directory`` (its ``sourcedir.tar.gz``) into the hyperparameters,
every value JSON-encoded. When ``sagemaker_program`` is there, ``train`` runs that script
instead of the built-in estimator trainer, the way the training toolkit does:

- the source is fetched into ``<base>/code`` and its ``requirements.txt`` installed
  (``modelapp.usercode``);
- the script runs as a child process in that directory (also on ``PYTHONPATH``): ``.py``
  with this Python, anything else as a command (``.sh`` with ``/bin/sh`` unless it has a
  ``#!`` line), with every ``SM_*`` variable of the toolkit's ``Environment.to_env_vars``
  and the hyperparameters other than ``sagemaker_*`` as ``--name value`` arguments,
  formatted exactly as the toolkit's ``mapping.to_cmd_args`` does (``script_env``);
- its stdout is the job's stdout, its stderr is copied to the job's stderr as it comes
  (``PYTHONUNBUFFERED=1``); its exit code is the job's; on failure ``output/failure`` starts
  with its last exception line, then the end of its stderr;
- SIGTERM (StopTrainingJob) is passed on to the script's process group; after
  ``STOP_GRACE_SECONDS`` the group is killed;
- every host runs it: distributing the work is the script's business.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

from modelapp.paths import SageMakerPaths
from modelapp.training.environment import TrainingEnvironment
from modelapp.training.errors import (
    COMPLETED,
    EXIT_OK,
    ClientError,
    TrainingResult,
    TrainingStopped,
)
from modelapp.training.script_env import (
    JOB_NAME,
    PROGRAM,
    REGION,
    SUBMIT_DIRECTORY,
    decode_hyperparameters,
    sm_variables,
    split_hyperparameters,
    text,
    to_cmd_args,
    training_environment,
)
from modelapp.usercode import (
    Tee,
    UserCodeError,
    binary_stream,
    child_environment,
    fetch_source,
    install_requirements,
    listing,
)

logger = logging.getLogger(__name__)

# SageMaker kills the container 120 s after SIGTERM; the script gets most of that.
STOP_GRACE_SECONDS = 100.0
TAIL_LINES = 40
TAIL_CHARS = 3000


def wants_script(raw_hyperparameters: dict[str, Any]) -> bool:
    """Script mode starts when the hyperparameters name a program."""
    return PROGRAM in raw_hyperparameters


class ScriptFailed(ClientError):
    """The user's script ended with a non-zero exit code (which becomes the job's)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- the run ------------------------------------------------------------------------------------
class ScriptRunner:
    """Fetch, install and run the user's script; one of ``train``'s runners."""

    def __init__(
        self, env: TrainingEnvironment, result: TrainingResult, clock: float
    ) -> None:
        self.env = env
        self.paths: SageMakerPaths = env.paths
        self.result = result
        self.clock = clock

    def run(self) -> None:
        decoded = decode_hyperparameters(self.env.hyperparameters.raw)
        user, sagemaker = split_hyperparameters(decoded)
        program = program_name(sagemaker.get(PROGRAM))
        self.result.estimator = f"script:{program}"
        self.result.channels = {
            name: {"mode": channel.input_mode, "content_type": channel.content_type}
            for name, channel in self.env.channels.items()
        }
        submit = sagemaker.get(SUBMIT_DIRECTORY)
        source_dir = self.fetch(submit, sagemaker.get(REGION))
        script = source_dir / program
        if not script.is_file():
            raise UserCodeError(
                f"{PROGRAM} names {program!r}, which is not in the source directory "
                f"{submit or source_dir} (it holds: {listing(source_dir)})."
            )
        # A setup.py makes the source directory a package (the toolkit's rule): it is
        # installed, and a .py entry point then runs as a module (python -m).
        package = script.suffix == ".py" and (source_dir / "setup.py").is_file()
        install_requirements(source_dir, package=package)
        training_env = training_environment(
            self.env,
            decoded,
            program=program,
            module_dir=str(submit) if submit else str(source_dir),
        )
        for directory in (self.paths.model_dir, self.paths.output_data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        child_env = self.child_environment(training_env, sagemaker, source_dir)
        command = command_for(source_dir, program, to_cmd_args(user), package=package)
        logger.info(
            "Invoking the user's script: %s (in %s)", shlex.join(command), source_dir
        )
        try:
            code, stderr = run_child(command, cwd=source_dir, env=child_env)
        except (TrainingStopped, KeyboardInterrupt) as exc:
            raise TrainingStopped(
                f"Training was stopped (SIGTERM): {program} was sent SIGTERM and has "
                f"ended; whatever it wrote to {self.paths.model_dir} is left as it is."
            ) from exc
        if code != 0:
            raise ScriptFailed(self.failure_reason(program, code, stderr), _exit(code))
        self.result.status, self.result.exit_code = COMPLETED, EXIT_OK

    def fetch(self, submit: Any, region: Any) -> Path:
        code_dir = self.paths.code_dir
        if submit in (None, ""):
            if not code_dir.is_dir():
                raise UserCodeError(
                    f"No {SUBMIT_DIRECTORY} hyperparameter and no code in {code_dir}: "
                    "say where the script is (the SDK sets it from source_dir)."
                )
            return code_dir
        if not isinstance(submit, str):
            raise UserCodeError(
                f"{SUBMIT_DIRECTORY} must be a string (an s3:// URI, file:// or a "
                f"path), got {submit!r}."
            )
        return fetch_source(
            submit, code_dir, region=region if isinstance(region, str) else None
        )

    def child_environment(
        self, training_env: dict[str, Any], sagemaker: dict[str, Any], source_dir: Path
    ) -> dict[str, str]:
        # Without smserve's secrets (SECRET_KEY, DATABASE_URL, ...): the script needs none.
        child = child_environment()
        child.update(sm_variables(training_env))
        # What the toolkit also exports before it starts the script.
        child["SAGEMAKER_JOB_NAME"] = text(sagemaker.get(JOB_NAME, ""))
        child["CURRENT_HOST"] = training_env["current_host"]
        child["SAGEMAKER_REGION"] = text(sagemaker.get(REGION, ""))
        child["PYTHONUNBUFFERED"] = "1"
        pythonpath = [str(source_dir), *filter(None, [child.get("PYTHONPATH")])]
        child["PYTHONPATH"] = os.pathsep.join(pythonpath)
        return child

    def failure_reason(self, program: str, code: int, stderr: str) -> str:
        # The toolkit's rule: a failure file the script wrote itself is kept.
        failure_file = self.paths.failure_file
        if failure_file.is_file():
            text = failure_file.read_text(errors="replace").strip()
            if text:
                return text
        return failure_message(program, code, stderr)


def program_name(value: Any) -> str:
    """``sagemaker_program`` checked: a relative path that stays in the source dir."""
    if not isinstance(value, str) or not value.strip():
        raise ClientError(
            f'{PROGRAM} must name the script to run (e.g. "train.py"), got {value!r}.'
        )
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ClientError(
            f"{PROGRAM} must be a path inside the source directory, got {value!r}."
        )
    return str(path)


def command_for(
    source_dir: Path, program: str, args: list[str], *, package: bool = False
) -> list[str]:
    """The command line, run in ``source_dir``: ``.py`` with this Python (as a module,
    ``python -m``, when the directory is an installed package); anything else as a
    command, by its ``#!`` line when it has one, else with ``/bin/sh`` (what the
    toolkit's ``sh -c ./script`` comes to)."""
    script = source_dir / program
    if package:
        return [
            sys.executable,
            "-m",
            ".".join(Path(program).with_suffix("").parts),
            *args,
        ]
    if script.suffix == ".py":
        return [sys.executable, program, *args]
    with open(script, "rb") as fh:
        shebang = fh.read(2) == b"#!"
    if shebang:
        script.chmod(script.stat().st_mode | 0o111)
        return [f"./{program}", *args]
    return ["/bin/sh", program, *args]


def run_child(command: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run the script in its own process group; returns (exit status, stderr's tail).

    Leaving by an exception (``TrainingStopped`` from SIGTERM) stops the group first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        proc = subprocess.Popen(
            command,  # a relative "./script" is found in cwd
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:  # e.g. a #! line naming an interpreter the image lacks
        raise UserCodeError(
            f"Cannot start {command[0]} in {cwd}: {exc.strerror or exc}. Check its "
            "#! line, or name a .py script."
        ) from exc
    tee = Tee(proc.stderr, binary_stream(sys.stderr))
    try:
        code = proc.wait()
    except BaseException:
        stop_group(proc)
        raise
    finally:
        tee.join()
    return code, tee.text()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the script's process group; SIGKILL after ``STOP_GRACE_SECONDS``."""
    logger.warning("Passing SIGTERM on to the script (pid %d).", proc.pid)
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)  # the script, or what it left behind
    proc.wait()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _exit(code: int) -> int:
    """A child's status as a shell reports it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


# --- explaining a failure -----------------------------------------------------------------------
def failure_message(program: str, code: int, stderr: str) -> str:
    """The script's last exception line first (what FailureReason shows), then how it
    ended and the end of its stderr."""
    lines = stderr.splitlines()
    headline = last_exception_line(lines)
    how = f"{program} exited with code {_exit(code)}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"{program} was killed by {name}"
        if -code == signal.SIGKILL:
            how += " (out of memory?)"
    tail = "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:].strip("\n")
    if not headline or not tail:
        return f"{how}; it printed nothing to stderr."
    parts = [headline, f"{how}; the end of its stderr:", tail]
    return "\n".join(parts)


def last_exception_line(lines: list[str]) -> str:
    """The exception line of the last Python traceback (``ValueError: ...``); without a
    traceback, the last line that says anything (an argparse error, a shell message)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""
