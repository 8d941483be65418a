"""Raw capture in SageMaker's data-capture format through the real server
(``docs/monitoring.md``): ``SMSERVE_CAPTURE_DESTINATION`` receives JSON Lines files in the
layout and record shape Model Monitor's data capture writes, one record per sampled
invocation, in a directory and in a local S3-compatible server (moto), each model of a
multi-model endpoint under its own name; files rotate by size and are written when a
worker stops; a destination that fails loses captures, never a request."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.script_mode import BUCKET, s3_client, s3_server
from tests.support.servers import wait_for

INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
CSV_BODY = b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
JSON_BODY = b"[[5.1, 3.5, 1.4, 0.2]]"
# Every invocation sampled, files closed within a second.
CAPTURE_ENV = {
    "SMSERVE_CAPTURE_PERCENT": "100",
    "SMSERVE_CAPTURE_ROTATE_SECONDS": "0.5",
    "SMSERVE_CAPTURE_ROTATE_MB": "1",
}
# {model}/{variant}/yyyy/mm/dd/hh/{mm-ss-mmm}-{uuid}.jsonl
KEY = re.compile(
    r"model/AllTraffic/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl"
)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def send_three(server: Any) -> dict[str, tuple[str, bytes, bytes]]:
    """A CSV, a JSON and an NPY invocation, each with its own inference id; the id ->
    (content type, body, answer)."""
    bodies = {
        "text/csv": CSV_BODY,
        "application/json": JSON_BODY,
        "application/x-npy": npy(np.array([[5.1, 3.5, 1.4, 0.2]])),
    }
    sent = {}
    for content_type, body in bodies.items():
        inference_id = str(uuid.uuid4())
        status, _, answer = server.request(
            "POST",
            "/invocations",
            body,
            {
                "Content-Type": content_type,
                "Accept": "application/json",
                INFERENCE_ID: inference_id,
            },
        )
        assert status == HTTPStatus.OK, answer
        sent[inference_id] = (content_type, body, answer)
    return sent


def check_records(
    lines: list[bytes], sent: dict[str, tuple[str, bytes, bytes]]
) -> None:
    """One record per invocation, in the data-capture shape, bodies as sent."""
    records = [json.loads(line) for line in lines]
    by_id = {r["eventMetadata"]["inferenceId"]: r for r in records}
    assert len(records) == len(sent)
    assert by_id.keys() == sent.keys()
    for inference_id, (content_type, body, answer) in sent.items():
        found = by_id[inference_id]
        assert found["eventVersion"] == "0"
        assert set(found["eventMetadata"]) == {
            "eventId",
            "inferenceTime",
            "inferenceId",
        }
        uuid.UUID(found["eventMetadata"]["eventId"])
        assert re.fullmatch(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z",
            found["eventMetadata"]["inferenceTime"],
        )
        given = found["captureData"]["endpointInput"]
        assert given["observedContentType"] == content_type
        assert given["mode"] == "INPUT"
        if content_type == "application/x-npy":
            assert given["encoding"] == "BASE64"
            assert base64.b64decode(given["data"]) == body
        else:
            assert given["encoding"] == (
                "CSV" if content_type == "text/csv" else "JSON"
            )
            assert given["data"] == body.decode()
        answered = found["captureData"]["endpointOutput"]
        assert answered["mode"] == "OUTPUT"
        assert answered["observedContentType"].startswith("application/json")
        assert answered["encoding"] == "JSON"
        assert answered["data"] == answer.decode()


def test_captures_in_a_directory(serve_factory, iris_base, tmp_path):
    """docs/settings.md: `SMSERVE_CAPTURE_DESTINATION` a directory: files under
    {model}/{variant}/yyyy/mm/dd/hh/, one record per invocation (100% sampled): CSV and
    JSON bodies as text, NPY as BASE64, the caller's inference id; each file written
    `SMSERVE_CAPTURE_ROTATE_SECONDS` after its first record, whole."""
    destination = tmp_path / "capture"
    server = serve_factory(
        iris_base,
        env={**CAPTURE_ENV, "SMSERVE_CAPTURE_DESTINATION": str(destination)},
    )
    sent = send_three(server)

    def lines() -> list[bytes] | None:
        found = [
            line
            for path in destination.rglob("*.jsonl")
            for line in path.read_bytes().splitlines()
        ]
        return found if len(found) >= len(sent) else None

    check_records(wait_for(lines, what="three captured records"), sent)
    for path in destination.rglob("*.jsonl"):
        assert KEY.fullmatch(path.relative_to(destination).as_posix()), path
    assert not list(destination.rglob(".*.partial"))


def test_captures_in_s3(serve_factory, iris_base):
    """`SMSERVE_CAPTURE_DESTINATION` as s3://bucket/prefix: the same records as objects
    under the prefix, through boto3 and AWS_ENDPOINT_URL (a moto server started here)."""
    with s3_server() as aws:
        client = s3_client(aws)
        client.create_bucket(Bucket=BUCKET)
        server = serve_factory(
            iris_base,
            env={
                **aws,
                **CAPTURE_ENV,
                "SMSERVE_CAPTURE_DESTINATION": f"s3://{BUCKET}/datacapture/",
            },
        )
        sent = send_three(server)

        def objects() -> list[str] | None:
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix="datacapture/")
            keys = [item["Key"] for item in listed.get("Contents", [])]
            lines = sum(len(read(key).splitlines()) for key in keys)
            return keys if lines >= len(sent) else None

        def read(key: str) -> bytes:
            return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

        keys = wait_for(objects, what="captured objects")
        for key in keys:
            assert KEY.fullmatch(key.removeprefix("datacapture/")), key
        check_records([line for key in keys for line in read(key).splitlines()], sent)


def test_a_failing_destination_loses_captures_not_requests(
    serve_factory, iris_base, tmp_path
):
    """A destination that cannot be written (a file where the directory should be):
    every request is still answered, and the log says the captures were lost."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    server = serve_factory(
        iris_base,
        env={**CAPTURE_ENV, "SMSERVE_CAPTURE_DESTINATION": str(blocked / "capture")},
    )
    for _ in range(5):
        status, _, answer = server.request(
            "POST", "/invocations", CSV_BODY, {"Content-Type": "text/csv"}
        )
        assert status == HTTPStatus.OK, answer
    wait_for(
        lambda: "Data capture not written" in server.log,
        what="the lost captures logged",
    )
    assert blocked.read_text() == ""
    assert not Path(blocked.parent / "capture").exists()


def test_a_large_file_is_written_before_its_time(serve_factory, iris_base, tmp_path):
    """`SMSERVE_CAPTURE_ROTATE_MB`: a file that reaches the size is written at once, an
    hour before its time; the next record starts a new file, not written yet."""
    destination = tmp_path / "capture"
    server = serve_factory(
        iris_base,
        env={
            **CAPTURE_ENV,
            "SMSERVE_CAPTURE_ROTATE_SECONDS": "3600",
            "SMSERVE_CAPTURE_DESTINATION": str(destination),
        },
        workers=1,
    )
    large = CSV_BODY * 36_000  # 1.15 MB
    for body in (large, CSV_BODY):
        status, _, answer = server.request(
            "POST", "/invocations", body, {"Content-Type": "text/csv"}
        )
        assert status == HTTPStatus.OK, answer
    (written,) = wait_for(
        lambda: list(destination.rglob("*.jsonl")), what="the large file written"
    )
    (line,) = written.read_bytes().splitlines()
    assert json.loads(line)["captureData"]["endpointInput"]["data"] == large.decode()
    # The small record's file is still open (an hour to go): only the one file exists.
    assert list(destination.rglob("*.jsonl")) == [written]


def test_a_stopping_server_writes_its_open_files(serve_factory, iris_base, tmp_path):
    """A worker that exits (the server stopped) writes the files it still holds, long
    before `SMSERVE_CAPTURE_ROTATE_SECONDS`."""
    destination = tmp_path / "capture"
    server = serve_factory(
        iris_base,
        env={
            **CAPTURE_ENV,
            "SMSERVE_CAPTURE_ROTATE_SECONDS": "3600",
            "SMSERVE_CAPTURE_DESTINATION": str(destination),
        },
    )
    sent = send_three(server)
    server.stop()
    lines = [
        line
        for path in destination.rglob("*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    check_records(lines, sent)


def test_a_multi_model_endpoint_captures_under_each_model(
    serve_factory, iris_base, tmp_path
):
    """A multi-model endpoint: each loaded model's invocations under its own name,
    `SMSERVE_CAPTURE_DESTINATION`/{model}/AllTraffic/..."""
    destination = tmp_path / "capture"
    empty = tmp_path / "base"
    empty.mkdir()
    server = serve_factory(
        empty,
        env={
            **CAPTURE_ENV,
            "SMSERVE_CAPTURE_DESTINATION": str(destination),
            "SAGEMAKER_MULTI_MODEL": "TRUE",
            "SMSERVE_MME_MODEL_ROOT": str(iris_base.parent),
        },
    )
    url = str(iris_base / "model")
    for name in ("first", "second"):
        load = json.dumps({"model_name": name, "url": url}).encode()
        status, _, answer = server.request(
            "POST", "/models", load, {"Content-Type": "application/json"}
        )
        assert status == HTTPStatus.OK, answer
    sent = {}
    for name, times in (("first", 2), ("second", 1)):
        for _ in range(times):
            inference_id = str(uuid.uuid4())
            status, _, answer = server.request(
                "POST",
                f"/models/{name}/invoke",
                CSV_BODY,
                {"Content-Type": "text/csv", INFERENCE_ID: inference_id},
            )
            assert status == HTTPStatus.OK, answer
            sent[inference_id] = name

    def by_model() -> dict[str, str] | None:
        found = {
            json.loads(line)["eventMetadata"]["inferenceId"]: path.relative_to(
                destination
            ).parts[0]
            for path in destination.rglob("*.jsonl")
            for line in path.read_bytes().splitlines()
        }
        return found if len(found) >= len(sent) else None

    assert wait_for(by_model, what="three captured records") == sent
    for path in destination.rglob("*.jsonl"):
        assert path.relative_to(destination).parts[1] == "AllTraffic", path
