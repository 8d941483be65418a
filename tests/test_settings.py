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


def test_the_key_is_never_written_through_a_planted_temp_name(tmp_path):
    """The temp name the key is written under is predictable: a symlink planted there
    is refused (no key kept, a warning), and its target stays untouched."""
    target = tmp_path / "target"
    target.write_text("untouched")
    state = tmp_path / "state"
    state.mkdir()
    code = (
        "import os, sys; from modelapp.state import keep_secret_key; "
        "os.symlink(sys.argv[2], os.path.join(sys.argv[1], f'.secret_key.{os.getpid()}')); "
        "print(keep_secret_key(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(state), str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    assert "Cannot keep a secret key" in done.stderr
    assert target.read_text() == "untouched"
    assert not (state / "secret_key").exists()


def test_a_key_others_can_read_is_used_with_a_warning(tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 50)
    key_file.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-c", KEEP, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "k" * 50
    assert "can be read by other users (mode 644): chmod 600 it" in done.stderr


def test_prepare_serve_keeps_the_state_owner_only(tmp_path):
    """After ``prepare_serve`` (what ``serve`` runs first), whatever the umask, the state
    dir it made is mode 700, and the SQLite database (password hashes, session keys)
    and the key are 600."""
    state = tmp_path / "state"
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGEMAKER_", "SMSERVE_", "DATABASE_URL", "SECRET_KEY"))
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; os.umask(0o022); sys.argv[0] = 'manage.py'; "
            "exec(open('manage.py').read())",
            "prepare_serve",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env={**clean, "SMSERVE_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "smserve.sqlite3").stat().st_mode & 0o777 == 0o600
    assert (state / "secret_key").stat().st_mode & 0o777 == 0o600


def test_detailed_errors_and_model_root_from_the_environment(tmp_path):
    """SMSERVE_DETAILED_ERRORS (default on) and SMSERVE_MME_MODEL_ROOT (default
    BASE_DIR/models, /opt/ml/models in the image)."""
    state = {"SMSERVE_STATE_DIR": str(tmp_path)}
    default = settings_with(state)["smserve"]
    assert default["DETAILED_ERRORS"] == "True"
    assert default["MME_MODEL_ROOT"] == "/opt/ml/models"
    assert (
        settings_with({**state, "SAGEMAKER_BASE_DIR": "/srv/ml"})["smserve"][
            "MME_MODEL_ROOT"
        ]
        == "/srv/ml/models"
    )
    changed = settings_with(
        {
            **state,
            "SMSERVE_DETAILED_ERRORS": "false",
            "SMSERVE_MME_MODEL_ROOT": "/data/models",
        }
    )["smserve"]
    assert (changed["DETAILED_ERRORS"], changed["MME_MODEL_ROOT"]) == (
        "False",
        "/data/models",
    )
