"""``modelapp.usercode``: fetching a user's source (s3://, file://, paths), safe
extraction and requirements.txt, on real files, a real pip and a local S3 server; then
importing an inference script and finding its hooks, with the inference toolkit's
optional trailing ``context``."""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import json
import os
import sys
import tarfile

import joblib
import numpy as np
import pytest

from modelapp import usercode
from modelapp.usercode import (
    UserCodeError,
    fetch_source,
    find_hooks,
    install_requirements,
    load_user_module,
    requirements_failure,
)
from tests.support.packages import OFFLINE_PIP, local_package
from tests.support.script_mode import (
    BUCKET,
    escaping_tarball,
    s3_client,
    s3_server,
    source_dir,
    tarball,
)

FILES = {"train.py": "print('hi')\n", "lib/util.py": "X = 1\n"}


def tree(directory):
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()
    )


@pytest.fixture
def src(tmp_path):
    return source_dir(tmp_path / "src", FILES)


@pytest.fixture(params=["data_filter", "without_filters"])
def extraction(request, monkeypatch):
    """Each extraction test twice: with tarfile's ``data`` filter (used even where it
    lacks the CVE-2025-4517 fix: smserve's own checks run before it), and as on a
    Python without tarfile's filters (the image's Debian 3.11.2), where smserve applies
    the same rules itself."""
    if request.param == "without_filters":
        monkeypatch.delattr(tarfile, "data_filter")
    else:
        monkeypatch.setattr(usercode, "STDLIB_FILTER_FIXED", True)
    return request.param


@pytest.mark.parametrize("form", ["plain", "file"])
def test_a_directory_is_copied_into_place(tmp_path, src, form):
    """A directory, as a plain path or a file:// URI, is copied (the original stays)."""
    uri = str(src) if form == "plain" else f"file://{src}"
    dest = fetch_source(uri, tmp_path / "code")
    assert dest == tmp_path / "code"
    assert tree(dest) == ["lib/util.py", "train.py"]
    (dest / "train.py").write_text("changed")
    assert (src / "train.py").read_text() == "print('hi')\n"


@pytest.mark.parametrize("form", ["plain", "file"])
def test_a_tarball_is_extracted_and_replaces_what_was_there(
    tmp_path, src, form, extraction
):
    archive = tarball(src, tmp_path / "sourcedir.tar.gz")
    dest = source_dir(tmp_path / "code", {"stale.py": "old"})
    fetch_source(str(archive) if form == "plain" else f"file://{archive}", dest)
    assert tree(dest) == ["lib/util.py", "train.py"]


def test_a_single_file_is_copied_into_the_directory(tmp_path, src):
    dest = fetch_source(str(src / "train.py"), tmp_path / "code")
    assert tree(dest) == ["train.py"]


def test_the_code_directory_itself_is_used_as_it_is(src):
    assert fetch_source(str(src), src) == src
    assert tree(src) == ["lib/util.py", "train.py"]


@pytest.mark.parametrize(
    ("kind", "member"), [("dotdot", "'../escaped.py'"), ("symlink", "'etc'")]
)
def test_an_archive_member_leaving_the_directory_is_refused(
    tmp_path, kind, member, extraction
):
    """``../`` paths and links out: refused, naming the member, and nothing extracted
    (the destination is left as it was)."""
    archive = escaping_tarball(tmp_path / "evil.tar.gz", kind)
    dest = source_dir(tmp_path / "code", {"kept.py": ""})
    with pytest.raises(UserCodeError, match=f"Refusing to extract .*{member}"):
        fetch_source(str(archive), dest)
    assert tree(dest) == ["kept.py"]
    assert not (tmp_path / "escaped.py").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".code")] == []


def test_an_absolute_member_lands_inside_the_directory(tmp_path, extraction):
    """An absolute member name loses its leading slash (tarfile's data filter): it is
    extracted below the destination, never at the absolute path."""
    archive = escaping_tarball(tmp_path / "evil.tar.gz", "absolute")
    dest = fetch_source(str(archive), tmp_path / "code")
    outside = tmp_path / "escaped-absolute.py"
    assert not outside.exists()
    assert (dest / str(outside).lstrip("/")).is_file()


def special_tarball(target, member: tarfile.TarInfo):
    """A tarball with ``train.py`` and then ``member`` (no data)."""
    with tarfile.open(target, "w:gz") as tar:
        good = tarfile.TarInfo("train.py")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"x=1"))
        tar.addfile(member)
    return target


@pytest.mark.parametrize(
    "kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, "hardlink_out", "absolute_link"]
)
def test_special_files_and_links_out_are_refused(tmp_path, kind, extraction):
    """A FIFO or a device, a hard link to a file outside, a symlink to an absolute
    path: refused, naming the member, nothing extracted."""
    member = tarfile.TarInfo("odd")
    if kind == "hardlink_out":
        member.type, member.linkname = tarfile.LNKTYPE, "../outside.txt"
        (tmp_path / "outside.txt").write_text("secret")
    elif kind == "absolute_link":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        member.type = kind
    archive = special_tarball(tmp_path / "odd.tar.gz", member)
    dest = source_dir(tmp_path / "code", {"kept.py": ""})
    with pytest.raises(UserCodeError, match="Refusing to extract .*'odd'"):
        fetch_source(str(archive), dest)
    assert tree(dest) == ["kept.py"]


def test_modes_lose_setuid_and_group_write_and_stay_readable(tmp_path, extraction):
    """The data filter's modes: no set-id bits, no group/other write, files readable and
    writable by their owner; an executable stays executable."""
    archive = tmp_path / "modes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, mode in [("run.sh", 0o4777), ("data.txt", 0o044), ("lib", 0o777)]:
            info = tarfile.TarInfo(name)
            if name == "lib":
                info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info, io.BytesIO(b"") if name != "lib" else None)
    dest = fetch_source(str(archive), tmp_path / "code")
    modes = {p.name: p.stat().st_mode & 0o7777 for p in dest.iterdir()}
    assert modes["run.sh"] == 0o755
    assert modes["data.txt"] == 0o644
    assert modes["lib"] & 0o7022 == 0


def test_a_file_that_is_no_archive_nor_source_is_explained(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(UserCodeError, match="does not exist"):
        fetch_source(str(missing), tmp_path / "code")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    dest = fetch_source(str(broken), tmp_path / "code")  # not a tarball: one file
    assert tree(dest) == ["broken.tar.gz"]


@pytest.mark.parametrize("uri", ["https://example.com/src.tar.gz", "file://host/x"])
def test_other_schemes_are_refused(tmp_path, uri):
    with pytest.raises(UserCodeError, match="file://|scheme"):
        fetch_source(uri, tmp_path / "code")


def test_s3_sources_come_through_boto3_and_aws_endpoint_url(tmp_path, src, monkeypatch):
    """A real boto3 client, configured only by the environment (AWS_ENDPOINT_URL),
    downloads the tarball; a missing key or bucket says so."""
    archive = tarball(src, tmp_path / "sourcedir.tar.gz")
    with s3_server() as aws:
        for name, value in aws.items():
            monkeypatch.setenv(name, value)
        client = s3_client(aws)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(archive), BUCKET, "job/source/sourcedir.tar.gz")

        dest = fetch_source(
            f"s3://{BUCKET}/job/source/sourcedir.tar.gz", tmp_path / "code"
        )
        assert tree(dest) == ["lib/util.py", "train.py"]
        with pytest.raises(UserCodeError, match="no such object"):
            fetch_source(f"s3://{BUCKET}/job/missing.tar.gz", tmp_path / "other")
        with pytest.raises(UserCodeError, match="no such bucket|no such object"):
            fetch_source("s3://smserve-no-bucket/k.tar.gz", tmp_path / "other")
    with pytest.raises(UserCodeError, match="expected s3://bucket/key"):
        fetch_source(f"s3://{BUCKET}/", tmp_path / "other")


def test_s3_endpoint_url_for_s3_alone_is_honoured(tmp_path, src, monkeypatch):
    """AWS_ENDPOINT_URL_S3 (the service-specific form) works the same way."""
    archive = tarball(src, tmp_path / "sourcedir.tar.gz")
    with s3_server() as aws:
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        for name, value in aws.items():
            monkeypatch.setenv(
                "AWS_ENDPOINT_URL_S3" if name == "AWS_ENDPOINT_URL" else name, value
            )
        client = s3_client(aws)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(archive), BUCKET, "sourcedir.tar.gz")
        dest = fetch_source(f"s3://{BUCKET}/sourcedir.tar.gz", tmp_path / "code")
    assert tree(dest) == ["lib/util.py", "train.py"]


def test_no_requirements_file_installs_nothing(tmp_path, src):
    assert install_requirements(src) is False


def test_satisfied_requirements_install_without_the_network(tmp_path, src):
    """Already installed requirements: pip says so and asks no index (--no-index)."""
    (src / "requirements.txt").write_text("--no-index\npytest\njoblib>=1\n")
    assert install_requirements(src, python=sys.executable) is True


def test_a_failed_install_names_the_requirement(tmp_path, src):
    (src / "requirements.txt").write_text(
        "--no-index\njoblib  # fine\nSMServe_No.Such-Package==2.0\n"
    )
    with pytest.raises(UserCodeError) as caught:
        install_requirements(src)
    message = str(caught.value)
    assert message.startswith(
        "Could not install requirement 'SMServe_No.Such-Package==2.0' from "
    )
    assert "(pip exited with 1)" in message


@pytest.fixture
def offline_pip(monkeypatch):
    """pip with no index and none of the machine's configuration, and the secrets a
    server's environment may hold."""
    for name, value in {
        **OFFLINE_PIP,
        "SECRET_KEY": "s3cr3t",
        "DJANGO_SECRET_KEY": "s3cr3t",
        "DATABASE_URL": "postgres://u:pw@db/x",
        "DJANGO_SUPERUSER_PASSWORD": "pw",
        "DJANGO_SUPERUSER_USERNAME": "admin",
    }.items():
        monkeypatch.setenv(name, value)


SECRETS = {
    "SECRET_KEY",
    "DJANGO_SECRET_KEY",
    "DATABASE_URL",
    "DJANGO_SUPERUSER_PASSWORD",
    "DJANGO_SUPERUSER_USERNAME",
}


def test_a_requirement_is_built_without_smserve_secrets(tmp_path, src, offline_pip):
    """A requirement's build runs with our environment minus SECRET_KEY,
    DJANGO_SECRET_KEY, DATABASE_URL and DJANGO_SUPERUSER_*: a typosquatted package
    learns none of them."""
    environ = tmp_path / "environ.json"
    probe = local_package(tmp_path / "probe", "smserve-env-probe", environ=environ)
    (src / "requirements.txt").write_text(f"{probe}\n")
    site = tmp_path / "site"
    assert install_requirements(src, target=site) is True

    names = set(json.loads(environ.read_text()))
    assert "PATH" in names
    assert names & SECRETS == set()
    assert (site / "smserve_env_probe.py").is_file()


def test_a_requirement_may_not_change_a_pinned_package(tmp_path, src, offline_pip):
    """With the image's pins as constraints, a requirement on another version of an
    installed package (joblib 0.0.1) fails naming it, before anything is built or
    installed; joblib is unchanged."""
    fake = local_package(tmp_path / "joblib", "joblib", "0.0.1", buildable=False)
    (src / "requirements.txt").write_text(f"joblib @ {fake.as_uri()}\n")
    before = importlib.metadata.version("joblib")
    with pytest.raises(UserCodeError) as caught:
        install_requirements(src, constrain=True)
    message = str(caught.value)
    assert message.startswith("Could not install requirement 'joblib @ ")
    assert "conflicting dependencies" in message
    assert importlib.metadata.version("joblib") == before


def test_a_target_gets_only_what_the_environment_lacks(tmp_path, src, offline_pip):
    """Installing into a target resolves against the environment: a requirement it
    satisfies (joblib, and the probe's own dependency on numpy) is not fetched again,
    so this works with no index; the new package alone lands in the target."""
    probe = local_package(tmp_path / "probe", "smserve-probe", requires=("numpy",))
    (src / "requirements.txt").write_text(f"joblib\n{probe}\n")
    site = tmp_path / "site"
    assert install_requirements(src, constrain=True, target=site) is True
    assert sorted(p.name for p in site.iterdir() if p.name != "__pycache__") == [
        "smserve_probe-1.0.dist-info",
        "smserve_probe.py",
    ]


def test_requirements_failure_without_a_named_requirement(tmp_path):
    """When pip's words name no line of the file, the message still quotes pip."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n")
    message = requirements_failure(requirements, "ERROR: disk full\n", 1)
    assert message == (
        f"Could not install one of the requirements in requirements.txt from "
        f"{requirements} (pip exited with 1): ERROR: disk full"
    )


# --- importing a script, finding its hooks -----------------------------------------------
INFERENCE_PY = '''\
"""Our version of the SDK docs' inference.py: all four hooks."""
import json
import os

import joblib
import numpy as np

from helpers import scale


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(request_body, request_content_type):
    if request_content_type != "application/json":
        raise ValueError(f"unsupported {request_content_type}")
    return scale(np.asarray(json.loads(request_body)))


def predict_fn(input_data, model):
    return model.predict(input_data)


def output_fn(prediction, accept, context):
    return json.dumps({"labels": prediction.tolist(), "context": context}), accept
'''

TRANSFORM_PY = """\
def model_fn(model_dir):
    return model_dir


def transform_fn(model, request_body, content_type, accept, context=None):
    return f"{model}|{request_body}|{content_type}|{accept}|{context}"
"""


@pytest.fixture
def isolated(monkeypatch):
    """sys.path and sys.modules as they were, whatever a test imports."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_an_inference_script_with_four_hooks_runs_them(
    tmp_path, iris, iris_model, isolated
):
    """The module imports with its siblings; each hook is called with its arguments,
    ``output_fn`` with the context too because it asks for it."""
    src = source_dir(
        tmp_path / "code",
        {"inference.py": INFERENCE_PY, "helpers.py": "def scale(x):\n    return x\n"},
    )
    joblib.dump(iris_model, tmp_path / "model.joblib")
    module = load_user_module(src, "inference.py")
    hooks = find_hooks(module)

    assert module.__name__ == "inference"
    assert hooks.defined() == ["model_fn", "input_fn", "predict_fn", "output_fn"]
    assert [h.takes_context for h in (hooks.input_fn, hooks.output_fn)] == [
        False,
        True,
    ]
    X, _ = iris
    model = hooks.model_fn(str(tmp_path), context="ignored")
    data = hooks.input_fn("[[5.1, 3.5, 1.4, 0.2]]", "application/json")
    prediction = hooks.predict_fn(data, model)
    body, content_type = hooks.output_fn(prediction, "application/json", context="c")
    assert body == '{"labels": [0], "context": "c"}'
    assert content_type == "application/json"
    assert np.array_equal(prediction, iris_model.predict(X[:1]))


def test_a_transform_fn_script_takes_context_by_a_default_argument(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"serve/transform.py": TRANSFORM_PY})
    hooks = find_hooks(load_user_module(src, "serve/transform.py"))
    assert hooks.defined() == ["model_fn", "transform_fn"]
    assert hooks.transform_fn("m", "b", "text/csv", "*/*", context="ctx") == (
        "m|b|text/csv|*/*|ctx"
    )


def test_transform_fn_with_the_other_hooks_is_refused(tmp_path, isolated):
    src = source_dir(
        tmp_path / "code",
        {"inference.py": TRANSFORM_PY + "\ndef input_fn(body, ct):\n    return body\n"},
    )
    module = load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError, match="defines transform_fn and input_fn"):
        find_hooks(module)


def test_a_hook_with_the_wrong_arguments_names_its_line(tmp_path, isolated):
    src = source_dir(
        tmp_path / "code",
        {"inference.py": "X = 1\n\n\ndef predict_fn(data):\n    return data\n"},
    )
    module = load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError) as caught:
        find_hooks(module)
    assert str(caught.value) == (
        f"{src / 'inference.py'}:4: predict_fn takes 1 arguments; expected "
        "predict_fn(input_data, model) or predict_fn(input_data, model, context)."
    )


def test_a_hook_that_is_not_callable_is_refused(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"inference.py": "model_fn = 'model.pkl'\n"})
    with pytest.raises(UserCodeError, match="model_fn must be a function, got str"):
        find_hooks(load_user_module(src, "inference.py"))


def test_a_script_that_does_not_import_names_the_file_and_line(tmp_path, isolated):
    """An exception at import time (here in a sibling module) names the innermost line
    of the user's code; a syntax error names its own line."""
    src = source_dir(
        tmp_path / "code",
        {
            "inference.py": "import helpers\n",
            "helpers.py": "x = 1\nraise RuntimeError('no GPU here')\n",
            "broken.py": "def model_fn(:\n",
        },
    )
    with pytest.raises(UserCodeError) as caught:
        load_user_module(src, "inference.py")
    assert str(caught.value) == (
        "inference.py could not be imported: RuntimeError: no GPU here "
        f"({src / 'helpers.py'}:2)"
    )
    assert "inference" not in sys.modules
    with pytest.raises(UserCodeError, match=rf"SyntaxError: .*\({src}/broken.py:1\)"):
        load_user_module(src, "broken.py")


def test_a_missing_or_escaping_program_is_refused(tmp_path, isolated):
    src = source_dir(tmp_path / "code", {"other.py": ""})
    with pytest.raises(UserCodeError, match=r"inference.py is not in .*other.py"):
        load_user_module(src, "inference.py")
    with pytest.raises(UserCodeError, match="must be a path inside"):
        load_user_module(src, "../inference.py")


def path_max_tarball(target):
    """The CVE-2025-4517 archive: 16 nested directories of 247-character names, each
    reached through a one-letter symlink; a link 16 levels up at the bottom of the
    chain, and ``escape`` through it to ``../outside``, then ``escape/pwned.txt``.
    Resolving the chain takes more than PATH_MAX, so a non-strict ``realpath`` stops
    part-way while the kernel follows it out of the destination."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    path = ""
    with tarfile.open(target, "w") as tar:

        def add(name, kind, linkname=""):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            if kind == tarfile.DIRTYPE:
                info.mode = 0o755
            tar.addfile(info)

        for step in steps:
            add(os.path.join(path, comp), tarfile.DIRTYPE)
            add(os.path.join(path, step), tarfile.SYMTYPE, comp)
            path = os.path.join(path, comp)
        chain = "/".join(steps)
        long_link = os.path.join(chain, "l" * 254)
        add(long_link, tarfile.SYMTYPE, "../" * len(steps))
        add("escape", tarfile.SYMTYPE, f"{long_link}/../outside")
        payload = tarfile.TarInfo("escape/pwned.txt")
        payload.size = 5
        tar.addfile(payload, io.BytesIO(b"owned"))
    return target


def test_an_archive_of_dot_is_extracted(tmp_path, extraction):
    """``tar -C src -czf x.tar.gz .``: members ``./``, ``./lib/``, ``./lib/util.py``;
    the ``./`` is the destination itself."""
    src = source_dir(tmp_path / "src", FILES)
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    dest = fetch_source(str(archive), tmp_path / "code")
    assert tree(dest) == ["lib/util.py", "train.py"]


def test_a_symlink_chain_longer_than_path_max_cannot_escape(tmp_path, extraction):
    """A member reached through a symlink the archive made is refused, and link targets
    are resolved by their names, not by ``realpath``: the PATH_MAX chain of
    CVE-2025-4517 writes nothing beside the destination."""
    work = tmp_path / "work"
    (work / "outside").mkdir(parents=True)
    archive = path_max_tarball(tmp_path / "chain.tar")
    with pytest.raises(UserCodeError, match="Refusing to extract "):
        usercode.extract_archive(archive, work / "dest")
    assert list((work / "outside").iterdir()) == []


def test_an_archive_declaring_more_than_the_cap_is_refused(tmp_path, extraction):
    """An archive whose members declare 10 GB is refused before a byte of it is
    written: a small xz or bz2 archive cannot fill the disk."""
    archive = tmp_path / "huge.tar.gz"
    big = tarfile.TarInfo("data.bin")
    big.size = 10 * 1024**3
    with gzip.open(archive, "wb") as fh:
        fh.write(big.tobuf(format=tarfile.PAX_FORMAT))
        fh.write(b"\0" * (1 << 20))  # a first MB of the declared data, then EOF
    with pytest.raises(UserCodeError, match=r"declare more than \d+ MB"):
        fetch_source(str(archive), tmp_path / "code")
    assert not (tmp_path / "code").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["huge.tar.gz"]


def test_an_archive_of_too_many_members_is_refused(tmp_path, extraction, monkeypatch):
    """More members than ``MAX_ARCHIVE_MEMBERS``: refused, nothing kept."""
    monkeypatch.setattr(usercode, "MAX_ARCHIVE_MEMBERS", 3)
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for n in range(5):
            tar.addfile(tarfile.TarInfo(f"f{n}.py"), io.BytesIO(b""))
    with pytest.raises(UserCodeError, match="holds more than 3 members"):
        fetch_source(str(archive), tmp_path / "code")
    assert not (tmp_path / "code").exists()
