"""Raw capture in SageMaker's data-capture format: a sample of the invocations, request
and response bodies as sent, written as JSON Lines files to ``SMSERVE['CAPTURE_DESTINATION']``
(a directory, or ``s3://bucket/prefix`` through boto3), so tooling that reads Model
Monitor's captures reads these.

A file's key is ``{prefix}/{model}/{variant}/yyyy/mm/dd/hh/{mm-ss-mmm}-{uuid}.jsonl``
(the hour of its first record, UTC); each line is one invocation (``record``). The
sample is ``SMSERVE['CAPTURE_PERCENT']``, drawn per request.

The request path of a sampled invocation keeps the body bytes it reads anyway
(``take``) and appends them, with the response body, to a bounded queue (``offer``);
nothing is encoded or written there. A daemon thread per worker process (``Writer``)
turns the queue into lines, keeps each file's lines in memory and writes the file whole
when it is ``CAPTURE_ROTATE_SECONDS`` old or ``CAPTURE_ROTATE_MB`` large. A full queue or
a destination that fails loses those captures (counted in ``Writer.lost``, logged),
never a request.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from modelapp import conf
from modelapp.invocation_log import after_render, inference_id

logger = logging.getLogger(__name__)

# Captures waiting for the writer; more are dropped (and counted) until it catches up.
QUEUE_LIMIT = 1024
# SageMaker's variant when an endpoint config names one production variant.
VARIANT = "AllTraffic"
# Media types captured as text, as Model Monitor's default CSV and JSON content types;
# every other body is BASE64.
TEXT_ENCODINGS = {
    "text/csv": "CSV",
    "application/json": "JSON",
    "application/jsonlines": "JSON",
    "application/x-jsonlines": "JSON",
}
# How long the writer sleeps when idle: the granularity of time-based rotation.
IDLE_SECONDS = 0.5


@dataclass
class Capture:
    """One sampled invocation, as the request path leaves it."""

    started: float
    body: bytes
    content_type: str
    inference_id: str
    model: str = ""
    output: bytes = b""
    output_type: str = ""


def enabled() -> bool:
    """Whether raw capture is on: a destination, and a share to sample."""
    return (
        bool(conf.get("CAPTURE_DESTINATION")) and float(conf.get("CAPTURE_PERCENT")) > 0
    )


def take(request: Any) -> Capture | None:
    """Before the body is parsed: whether this request is sampled, and if so its body
    (read once, which the parser then reads from memory)."""
    if not enabled() or random.random() * 100 >= float(conf.get("CAPTURE_PERCENT")):
        return None
    return Capture(
        started=time.time(),
        body=request.body,
        content_type=request.META.get("CONTENT_TYPE") or "",
        inference_id=inference_id(request),
    )


def offer(request: Any, response: Any) -> None:
    """After the view: queue a sampled, answered invocation with its response body."""
    captured: Capture | None = getattr(request, "data_capture", None)
    if captured is None or response.status_code >= 400 or response.streaming:
        return

    def finish(rendered: Any) -> None:
        captured.model = getattr(request, "served_model", "") or ""
        captured.output = bytes(rendered.content)
        captured.output_type = rendered.get("Content-Type", "")
        writer.put(captured)

    after_render(response, finish)


def payload(data: bytes, content_type: str, mode: str) -> dict[str, str]:
    """One side of ``captureData``: text for CSV and JSON, else BASE64."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    encoding = TEXT_ENCODINGS.get(media_type)
    text: str | None = None
    if encoding is not None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = None
    if encoding is None or text is None:
        encoding, text = "BASE64", base64.b64encode(data).decode("ascii")
    return {
        "observedContentType": content_type,
        "mode": mode,
        "data": text,
        "encoding": encoding,
    }


def record(captured: Capture) -> dict[str, Any]:
    """The line Model Monitor's data capture writes for one invocation."""
    when = datetime.fromtimestamp(captured.started, UTC)
    metadata = {
        "eventId": str(uuid.uuid4()),
        "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if captured.inference_id:
        metadata["inferenceId"] = captured.inference_id
    return {
        "captureData": {
            "endpointInput": payload(captured.body, captured.content_type, "INPUT"),
            "endpointOutput": payload(captured.output, captured.output_type, "OUTPUT"),
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    }


@dataclass
class OpenFile:
    """The lines of one file not written yet."""

    key: str
    opened: float
    lines: list[bytes] = field(default_factory=list)
    size: int = 0


class Writer:
    """One per process: the queue, and the thread that writes its files."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Capture] = queue.Queue(QUEUE_LIMIT)
        self.files: dict[tuple[str, str], OpenFile] = {}
        self.lost = 0
        self._pid = 0
        self._lock = threading.Lock()
        # The writer thread and the exit handler both write files.
        self._files_lock = threading.Lock()
        self._s3: Any = None

    def put(self, captured: Capture) -> None:
        self._ensure_thread()
        try:
            self.queue.put_nowait(captured)
        except queue.Full:
            self.lost += 1

    def _ensure_thread(self) -> None:
        # A forked gunicorn worker has the master's object but not its thread.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.files = {}
            threading.Thread(target=self._run, name="data-capture", daemon=True).start()

    # --- the writer thread --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                captured = self.queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                pass
            else:
                with self._files_lock:
                    self.add(captured)
            with self._files_lock:
                self.rotate(time.time())

    def add(self, captured: Capture) -> None:
        line = orjson.dumps(record(captured)) + b"\n"
        model = captured.model or "model"
        when = datetime.fromtimestamp(captured.started, UTC)
        hour = when.strftime("%Y/%m/%d/%H")
        current = self.files.get((model, hour))
        if current is None:
            now = datetime.now(UTC)
            name = f"{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            current = OpenFile(f"{model}/{VARIANT}/{hour}/{name}", time.time())
            self.files[(model, hour)] = current
        current.lines.append(line)
        current.size += len(line)

    def rotate(self, now: float, force: bool = False) -> None:
        """Write the files that are old or large enough (all of them with ``force``)."""
        seconds = float(conf.get("CAPTURE_ROTATE_SECONDS"))
        limit = int(conf.get("CAPTURE_ROTATE_MB")) * 1024 * 1024
        for key, current in list(self.files.items()):
            if force or current.size >= limit or now - current.opened >= seconds:
                del self.files[key]
                self.write(current)

    def close_all(self) -> None:
        """At a worker's exit (gunicorn's ``worker_exit``): everything queued or open,
        written now."""
        with self._files_lock:
            while True:
                try:
                    self.add(self.queue.get_nowait())
                except queue.Empty:
                    break
            self.rotate(time.time(), force=True)

    def write(self, current: OpenFile) -> None:
        """One file to the destination; a failure loses its lines, and says so."""
        destination = str(conf.get("CAPTURE_DESTINATION"))
        data = b"".join(current.lines)
        try:
            if destination.startswith("s3://"):
                self._put_s3(destination, current.key, data)
            else:
                self._put_file(Path(destination), current.key, data)
        except Exception as exc:  # any destination failure: captures lost, not requests
            self.lost += len(current.lines)
            logger.warning(
                "Data capture not written to %s (%s: %s); %d capture(s) lost so far.",
                destination,
                type(exc).__name__,
                exc,
                self.lost,
            )

    @staticmethod
    def _put_file(root: Path, key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside, then renamed: a reader never sees half a file.
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def _put_s3(self, destination: str, key: str, data: bytes) -> None:
        bucket, _, prefix = destination[len("s3://") :].partition("/")
        if self._s3 is None:
            import boto3  # only with an s3:// destination

            # boto3 reads AWS_ENDPOINT_URL (and the standard credential chain) itself.
            self._s3 = boto3.client("s3")
        full = f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key
        self._s3.put_object(Bucket=bucket, Key=full, Body=data)


writer = Writer()
