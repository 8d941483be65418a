"""Local Python packages built by pip in a test, with no index and no setuptools: each is
a directory with an in-tree PEP 517 backend (``requires = []``), so pip builds it offline.

Building it (pip's ``build_wheel``) appends a line to ``marker`` (counting pip's installs)
and writes the names of the build's environment variables to ``environ``.
"""

from __future__ import annotations

import json
from pathlib import Path

BACKEND = """\
import base64
import hashlib
import json
import os
import zipfile

SPEC = json.loads({spec!r})
NAME, VERSION = SPEC["name"], SPEC["version"]
DIST_INFO = f"{{NAME.replace('-', '_')}}-{{VERSION}}.dist-info"


def _metadata():
    lines = ["Metadata-Version: 2.1", f"Name: {{NAME}}", f"Version: {{VERSION}}"]
    return "\\n".join(lines + [f"Requires-Dist: {{r}}" for r in SPEC["requires"]]) + "\\n"


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST_INFO))
    with open(os.path.join(metadata_directory, DIST_INFO, "METADATA"), "w") as fh:
        fh.write(_metadata())
    return DIST_INFO


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if not SPEC["buildable"]:
        raise RuntimeError("this probe package must never be built")
    if SPEC["marker"]:
        with open(SPEC["marker"], "a") as fh:
            fh.write(f"{{os.getpid()}}\\n")
    if SPEC["environ"]:
        with open(SPEC["environ"], "w") as fh:
            json.dump(sorted(os.environ), fh)
    wheel = f"{{NAME.replace('-', '_')}}-{{VERSION}}-py3-none-any.whl"
    files = {{
        f"{{SPEC['module']}}.py": f"VERSION = {{VERSION!r}}\\n",
        f"{{DIST_INFO}}/METADATA": _metadata(),
        f"{{DIST_INFO}}/WHEEL": (
            "Wheel-Version: 1.0\\nGenerator: smserve-tests\\n"
            "Root-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }}
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for path, text in files.items():
            data = text.encode()
            zf.writestr(path, data)
            digest = hashlib.sha256(data).digest()
            b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{b64}},{{len(data)}}")
        record.append(f"{{DIST_INFO}}/RECORD,,")
        zf.writestr(f"{{DIST_INFO}}/RECORD", "\\n".join(record) + "\\n")
    return wheel
"""


def local_package(
    directory: Path,
    name: str,
    version: str = "1.0",
    *,
    module: str | None = None,
    requires: tuple[str, ...] = (),
    marker: Path | None = None,
    environ: Path | None = None,
    buildable: bool = True,
) -> Path:
    """A package directory pip can install offline (``pip install <directory>``): the
    module ``module`` (default: the name with underscores) holding ``VERSION``."""
    spec = {
        "name": name,
        "version": version,
        "module": module or name.replace("-", "_"),
        "requires": list(requires),
        "marker": str(marker) if marker else "",
        "environ": str(environ) if environ else "",
        "buildable": buildable,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "probe_backend"\n'
        'backend-path = ["."]\n'
    )
    (directory / "probe_backend.py").write_text(BACKEND.format(spec=json.dumps(spec)))
    return directory


# pip without any index or find-links of the machine's configuration: only what a test
# names by path can be installed.
OFFLINE_PIP = {
    "PIP_NO_INDEX": "1",
    "PIP_CONFIG_FILE": "/dev/null",
    "PIP_FIND_LINKS": "",
    "PIP_NO_CACHE_DIR": "1",
}
