"""Every error nginx answers by itself is JSON ``{"detail", "code"}``, never an HTML page.

The requests go over raw sockets to the real ``docker/serve``: most of them are ones an
HTTP library refuses to send (a broken request line, a 60 KB header, ``/../``).
"""

from __future__ import annotations

import json
import re
import socket
import time
from http import HTTPStatus

import pytest

from tests.support import ROOT
from tests.support.rawhttp import RawResponse, raw_request, read_response
from tests.support.servers import ServeProcess

pytestmark = pytest.mark.server

CLIENT_TIMEOUT = 2


@pytest.fixture(scope="module")
def nginx_server(iris_base, tmp_path_factory):
    """The iris tree served with a short client timeout (the slow-client case)."""
    server = ServeProcess(
        iris_base,
        tmp_path_factory.mktemp("nginx_errors"),
        env={"SMSERVE_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT)},
    )
    server.start()
    yield server
    server.stop()


def assert_json_error(
    response: RawResponse | None, status: HTTPStatus, code: str, detail: str
) -> None:
    assert response is not None, "the connection closed without an answer"
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    assert b"<html" not in response.body.lower()
    error = response.json()
    assert error["code"] == code
    assert re.search(detail, error["detail"]), error["detail"]


@pytest.mark.parametrize(
    ("name", "request_bytes", "status", "code", "detail"),
    [
        (
            "bad request line",
            b"GARBAGE\r\n\r\n",
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            "could not read the request line",
        ),
        (
            "unknown HTTP version",
            b"GET /ping HTTP/7.1\r\nHost: x\r\n\r\n",
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            "http_version_not_supported",
            "HTTP/1.0 and HTTP/1.1",
        ),
        (
            "path above the root",
            b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            "climbs above /",
        ),
        (
            "header line with no colon",
            b"GET /ping HTTP/1.1\r\nHost: x\r\nnocolon\x01\r\n\r\n",
            HTTPStatus.BAD_REQUEST,
            "bad_request",
            "a header",
        ),
        (
            "oversized header",
            b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n",
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "over 8 KB",
        ),
        (
            # Each header under 8 KB, 35 KB in all: over the four 8 KB buffers.
            "headers over 32 KB in all",
            b"GET /ping HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-Part-%d: " % i + b"a" * 7000 + b"\r\n" for i in range(5))
            + b"\r\n",
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "over 32 KB in all",
        ),
        (
            "request line over 8 KB",
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            HTTPStatus.REQUEST_URI_TOO_LONG,
            "uri_too_long",
            "in the body, not in the URL",
        ),
        (
            "PUT on /ping",
            b"PUT /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method PUT is not allowed",
        ),
        (
            "POST on /ping",
            b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method POST is not allowed",
        ),
        (
            "declared body over the limit",
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 7000000\r\n\r\n1,2,3,4\n",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            "payload limit of 6 MB",
        ),
        (
            "unsupported Transfer-Encoding",
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            HTTPStatus.NOT_IMPLEMENTED,
            "not_implemented",
            "Transfer-Encoding",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_nginx_errors_are_json(nginx_server, name, request_bytes, status, code, detail):
    """What nginx rejects before the app sees it is still the API's JSON error. README Errors rows: `bad_request`, the 405 nginx answers itself, 414/431, 411/501/505.
    docs/serving.md, Errors: "request nginx cannot read: a broken request line or
    header"; "a path climbing above `/` (`/../etc/passwd`)"; "a method nginx answers
    itself refuses (`PUT /ping`)"; "request line over 8 KB / a header over 8 KB (32 KB
    in all)"; "`Transfer-Encoding` other than chunked"; "HTTP other than 1.0/1.1".
    """
    assert_json_error(
        raw_request(nginx_server.port, request_bytes), status, code, detail
    )


@pytest.mark.parametrize("accept", ["text/html", "*/*", None])
def test_browser_accept_still_gets_json(nginx_server, accept):
    """A browser's Accept changes nothing: nginx's 405 is JSON, not its HTML page."""
    headers = f"Accept: {accept}\r\n" if accept else ""
    response = raw_request(
        nginx_server.port,
        f"DELETE /ping HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode(),
    )
    assert_json_error(
        response, HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", "DELETE"
    )


def test_body_streamed_over_the_limit_is_413(nginx_server):
    """A chunked body that grows past 6 MB is cut off with the JSON 413."""
    with socket.create_connection(("127.0.0.1", nginx_server.port), 30) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"1,2,3,4\n" * 8192
        try:
            for _ in range(7 * 1024 * 1024 // len(chunk) + 1):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx answered and closed before the end: the answer is readable
        response = read_response(sock)
    assert_json_error(
        response,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "payload_too_large",
        "payload limit of 6 MB",
    )


def test_slow_client_is_dropped(nginx_server):
    """A client that stops half-way through its body is dropped after the client
    timeout, without an HTML page (nginx sends no answer for a 408, it closes), and
    the server goes on answering. README Errors row: a client that stalls (no answer, a logged 408).
    docs/serving.md, Errors: "a client that stalls while sending its body for
    `SMSERVE_CLIENT_TIMEOUT` (60 s)".
    """
    with socket.create_connection(("127.0.0.1", nginx_server.port), 30) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 100\r\n\r\n5.1,3.5"
        )
        # Blocks until nginx gives up on the body and closes the connection.
        response = read_response(sock)
    assert response is None
    assert " 408 " in nginx_server.log
    status, _, _ = nginx_server.request("GET", "/ping")
    assert status == HTTPStatus.OK


def test_slow_headers_are_dropped(nginx_server):
    """A client that never finishes its headers is dropped the same way. README Errors row: a client that stalls (no answer, a logged 408).
    docs/serving.md, Errors: "or its headers for 10 s (or that timeout, if shorter)":
    here that timeout, 2 s, is the shorter.
    """
    with socket.create_connection(("127.0.0.1", nginx_server.port), 30) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        assert read_response(sock) is None


def error_locations() -> dict[str, tuple[int, dict]]:
    """``/.errors/NAME`` -> (status, JSON body) as written in the template."""
    text = (ROOT / "docker" / "nginx.conf").read_text()
    found = {}
    for name, status, body in re.findall(
        r"location = (/\.errors/\w+) \{\s*internal;\s*return (\d+) '([^']*)\\n';", text
    ):
        # Placeholders and nginx variables stand for plain words.
        body = re.sub(r"@@\w+@@|\$\w+", "X", body)
        found[name] = (int(status), json.loads(body))
    return found


def test_every_nginx_error_has_a_json_page():
    """Each status nginx can answer by itself (those no raw request above can provoke,
    too: 411, 500, 502) has an error page whose body is JSON with a detail and a code. README Errors rows: every status nginx answers itself."""
    text = (ROOT / "docker" / "nginx.conf").read_text()
    pages = dict(re.findall(r"error_page ([\d =]+) (/\.errors/\w+);", text))
    codes = {
        int(c) for spec, _ in pages.items() for c in re.findall(r"\b\d{3}\b", spec)
    }
    assert {
        400,
        404,
        405,
        408,
        411,
        413,
        414,
        494,
        500,
        501,
        502,
        503,
        504,
        505,
    } <= codes
    locations = error_locations()
    assert set(pages.values()) == set(locations)
    for status, body in locations.values():
        assert 400 <= status < 600
        assert set(body) == {"detail", "code"}
        assert body["detail"]
        assert body["code"]


@pytest.mark.parametrize("value", [b"method=predict\x7f", b"a\x01b"])
def test_header_gunicorn_refuses_is_json(nginx_server, value):
    """A header value with a control character passes nginx, and gunicorn refuses it:
    in JSON too (``smserve.workers.JSONErrorsMixin``), not gunicorn's HTML page. README Errors row: `bad_request` (a control character in a header).
    docs/serving.md, Errors: "a header value with a control character (gunicorn refuses
    it, in JSON too)".
    """
    response = raw_request(
        nginx_server.port,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"X-Amzn-SageMaker-Custom-Attributes: " + value + b"\r\n"
        b"Content-Length: 16\r\n\r\n5.1,3.5,1.4,0.2\n",
    )
    assert_json_error(
        response,
        HTTPStatus.BAD_REQUEST,
        "bad_request",
        "Invalid HTTP Header: 'X-AMZN-SAGEMAKER-CUSTOM-ATTRIBUTES'",
    )


def test_ping_answers_while_1100_slow_clients_hold_connections(
    iris_base, tmp_path_factory
):
    """1,100 clients that open a connection and send half a request line (slowloris)
    do not use up nginx's connections: /ping still answers 200 within 1 s. Security
    review L14."""
    server = ServeProcess(iris_base, tmp_path_factory.mktemp("slowloris"))
    server.start()
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", server.port), 10)
            sock.sendall(b"GET /ping HTTP/1.1\r\n")
            held.append(sock)
        started = time.monotonic()
        status, _, body = server.request("GET", "/ping", timeout=1)
        assert status == HTTPStatus.OK, body
        assert time.monotonic() - started < 1
    finally:
        for sock in held:
            sock.close()
        server.stop()
    assert "worker_connections are not enough" not in server.log


def test_over_limit_body_from_a_client_paused_mid_way_still_reads_413(nginx_server):
    """A client that writes its whole 7 MB body before reading, descheduled for 7 s
    half-way (a busy machine): nginx, having answered 413, goes on reading and discarding
    the body (up to 10 s between reads), so the client finishes writing and reads the
    JSON 413, not a reset. README Errors row: `payload_too_large`."""
    body = b"1,2,3,4\n" * (7 * 1024 * 1024 // 8)
    with socket.create_connection(("127.0.0.1", nginx_server.port), 30) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        half = len(body) // 2
        sock.sendall(body[:half])
        time.sleep(7)
        sock.sendall(body[half:])
        response = read_response(sock)
    assert_json_error(
        response,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "payload_too_large",
        "payload limit of 6 MB",
    )
