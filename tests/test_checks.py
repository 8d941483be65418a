"""System checks catch a broken SMSERVE before the first request."""

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings


@pytest.mark.parametrize(
    ("override", "check_id"),
    [
        ({"PARSERS": ["modelapp.parsers.NoSuchParser"]}, "modelapp.E001"),
        ({"RENDERERS": ["modelapp.parsers.CSVParser"]}, "modelapp.E002"),
        ({"PREDICTORS": ["builtins.dict"]}, "modelapp.E003"),
        ({"DEFAULT_CONTENT_TYPE": "text/plain"}, "modelapp.E004"),
    ],
)
def test_bad_settings_fail_check(override, check_id):
    with override_settings(SMSERVE={**settings.SMSERVE, **override}):
        with pytest.raises(SystemCheckError, match=check_id):
            call_command("check")


def test_settings_reject_bad_payload_limit():
    """An out-of-range SAGEMAKER_MAX_PAYLOAD_IN_MB stops start-up with its name."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import smserve.settings"],
        env={**os.environ, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "101"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB must be 0..100, got 101" in result.stderr
