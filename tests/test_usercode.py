"""``modelapp.usercode``: fetching a user's source (s3://, file://, paths), safe
extraction, and requirements.txt, on real files, a real pip and a local S3 server."""

from __future__ import annotations

import sys

import pytest

from modelapp.usercode import (
    UserCodeError,
    fetch_source,
    install_requirements,
    requirements_failure,
)
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
def test_a_tarball_is_extracted_and_replaces_what_was_there(tmp_path, src, form):
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
def test_an_archive_member_leaving_the_directory_is_refused(tmp_path, kind, member):
    """``../`` paths and links out: refused, naming the member, and nothing extracted
    (the destination is left as it was)."""
    archive = escaping_tarball(tmp_path / "evil.tar.gz", kind)
    dest = source_dir(tmp_path / "code", {"kept.py": ""})
    with pytest.raises(UserCodeError, match=f"Refusing to extract .*{member}"):
        fetch_source(str(archive), dest)
    assert tree(dest) == ["kept.py"]
    assert not (tmp_path / "escaped.py").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".code")] == []


def test_an_absolute_member_lands_inside_the_directory(tmp_path):
    """An absolute member name loses its leading slash (tarfile's data filter): it is
    extracted below the destination, never at the absolute path."""
    archive = escaping_tarball(tmp_path / "evil.tar.gz", "absolute")
    dest = fetch_source(str(archive), tmp_path / "code")
    outside = tmp_path / "escaped-absolute.py"
    assert not outside.exists()
    assert (dest / str(outside).lstrip("/")).is_file()


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


def test_requirements_failure_without_a_named_requirement(tmp_path):
    """When pip's words name no line of the file, the message still quotes pip."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n")
    message = requirements_failure(requirements, "ERROR: disk full\n", 1)
    assert message == (
        f"Could not install one of the requirements in requirements.txt from "
        f"{requirements} (pip exited with 1): ERROR: disk full"
    )
