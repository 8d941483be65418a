"""Settings built from the environment, in a fresh interpreter each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.support import ROOT

PRINT = (
    "import json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'smserve.settings'; "
    "import smserve.settings as s; from modelapp import conf; "
    "print(json.dumps({'key': s.SECRET_KEY, "
    "'smserve': {k: str(conf.get(k)) for k in conf.DEFAULTS}, "
    "'max_payload_bytes': conf.max_payload_bytes(), "
    "'upload': s.DATA_UPLOAD_MAX_MEMORY_SIZE, 'debug': s.DEBUG}))"
)
KEEP = (
    "import sys; from modelapp.state import keep_secret_key; "
    "print(keep_secret_key(sys.argv[1]))"
)


def load_settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    """A fresh interpreter importing the settings with ``env`` (and no other SageMaker or
    smserve variable)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGEMAKER_", "SMSERVE_"))
    }
    return subprocess.run(
        [sys.executable, "-c", PRINT],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def settings_with(env: dict[str, str]) -> dict:
    result = load_settings(env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_secret_key_generated_once_and_shared(tmp_path):
    """Without SECRET_KEY, processes keeping a key at once (``serve`` does, before
    gunicorn starts) agree on one, kept in the state dir with owner-only permissions,
    and the settings of every later process read it."""

    def keep(_: int) -> str:
        done = subprocess.run(
            [sys.executable, "-c", KEEP, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with ThreadPoolExecutor(4) as pool:
        keys = set(pool.map(keep, range(4)))
    assert len(keys) == 1
    key_file = tmp_path / "secret_key"
    assert key_file.read_text() == next(iter(keys))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert settings_with({"SMSERVE_STATE_DIR": str(tmp_path)})["key"] == keys.pop()


def test_importing_settings_writes_nothing(tmp_path):
    """The settings only read: no state dir, no key file appears (a per-process key
    stands in until serve keeps one)."""
    state = tmp_path / "state"
    settings = settings_with({"SMSERVE_STATE_DIR": str(state)})
    assert len(settings["key"]) > 40
    assert not state.exists()


def test_secret_key_from_environment(tmp_path):
    settings = settings_with(
        {"SMSERVE_STATE_DIR": str(tmp_path), "SECRET_KEY": "from-env"}
    )
    assert settings["key"] == "from-env"
    assert not (tmp_path / "secret_key").exists()


def test_batch_mode_limits(tmp_path):
    """Batch mode: any case of true, the payload limit from SAGEMAKER_MAX_PAYLOAD_IN_MB
    (0 = unlimited, also for Django), and a 3600 s default timeout."""
    settings = settings_with(
        {
            "SMSERVE_STATE_DIR": str(tmp_path),
            "SAGEMAKER_BATCH": "TRUE",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
        }
    )
    assert settings["smserve"]["BATCH"] == "True"
    assert settings["smserve"]["TIMEOUT"] == "3600"
    assert settings["max_payload_bytes"] is None
    assert settings["upload"] is None


def test_real_time_defaults(tmp_path):
    settings = settings_with(
        {
            "SMSERVE_STATE_DIR": str(tmp_path),
            "MODEL_SERVER_WORKERS": "3",
            "MODEL_SERVER_TIMEOUT": "7",
        }
    )
    assert settings["smserve"]["TIMEOUT"] == "7"
    assert settings["smserve"]["WORKERS"] == "3"
    assert settings["upload"] == 6 * 1024 * 1024
    assert settings["debug"] is False


def test_sagemaker_names_win_over_plain_ones(tmp_path):
    settings = settings_with(
        {
            "SMSERVE_STATE_DIR": str(tmp_path),
            "MODEL_SERVER_WORKERS": "3",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "5",
        }
    )
    assert settings["smserve"]["WORKERS"] == "5"


def test_script_mode_from_the_sdk_variables(tmp_path):
    """SAGEMAKER_PROGRAM and SAGEMAKER_SUBMIT_DIRECTORY, as the SDK sets them, name the
    script to serve; unset, there is none."""
    settings = settings_with(
        {
            "SMSERVE_STATE_DIR": str(tmp_path),
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_SUBMIT_DIRECTORY": "s3://bucket/source/sourcedir.tar.gz",
        }
    )
    assert settings["smserve"]["PROGRAM"] == "inference.py"
    assert settings["smserve"]["SUBMIT_DIRECTORY"] == (
        "s3://bucket/source/sourcedir.tar.gz"
    )
    plain = settings_with({"SMSERVE_STATE_DIR": str(tmp_path)})
    assert plain["smserve"]["PROGRAM"] == ""


def test_unwritable_state_dir_still_starts(tmp_path):
    """A state dir that cannot be written gives no kept key and a warning, not a crash
    (training needs no persistent key); the settings still start with a per-process
    key."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-c", KEEP, str(blocker / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert "Cannot keep a secret key" in done.stderr
    settings = settings_with({"SMSERVE_STATE_DIR": str(blocker / "state")})
    assert len(settings["key"]) > 40


def test_invocation_log_is_app_or_nginx(tmp_path):
    """The app logs invocations itself unless serve says nginx does; anything else is a
    startup error naming the variable."""
    state = {"SMSERVE_STATE_DIR": str(tmp_path)}
    assert settings_with(state)["smserve"]["INVOCATION_LOG"] == "app"
    nginx = settings_with({**state, "SMSERVE_INVOCATION_LOG": "nginx"})
    assert nginx["smserve"]["INVOCATION_LOG"] == "nginx"
    result = load_settings({**state, "SMSERVE_INVOCATION_LOG": "both"})
    assert result.returncode != 0
    assert (
        "SMSERVE_INVOCATION_LOG must be 'app' or 'nginx', got 'both'" in result.stderr
    )
