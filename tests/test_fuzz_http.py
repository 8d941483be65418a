"""A seeded fuzz of the real server: malformed bodies x Content-Types x Accept values.

Whatever arrives, the answer is never a 5xx and never HTML, an error is the API's
``{"detail", "code"}`` (one plain line under ``Accept: text/csv``), and the server still
answers afterwards. The seed is fixed, so a failure is reproducible: the assertion names
the body, the headers and the answer.
"""

from __future__ import annotations

import http.client
import io
import json
import random
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import numpy as np
import pytest

from tests.support.servers import ServeProcess

pytestmark = pytest.mark.server

SEED = 20261128
BODIES = 320
PAIRS_PER_BODY = 3

CONTENT_TYPES = [
    None,
    "text/csv",
    "text/csv; charset=latin-1",
    "text/csv; charset=utf-16",
    "text/csv; charset=no-such-charset",
    "text/csv; header=present",
    "TEXT/CSV; Header=Present; charset=utf-8",
    "application/json",
    "application/json; charset=utf-8",
    "application/jsonlines",
    "application/x-npy",
    "application/octet-stream",
    "image/png",
    "text/csv; ;;=",
    "*/*",
]
ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "text/csv",
    "application/jsonlines",
    "application/x-npy",
    "text/html",
    "text/html,application/xhtml+xml,*/*;q=0.8",
    "application/json;q=abc, text/csv;q=0",
    ";;;",
]
CUSTOM_ATTRIBUTES = [
    None,
    "method=predict_proba",
    "method=nonsense",
    "method=",
    "=,=,;;",
    "method=predict\x7f",
]

VALID_CSV = b"5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3\n7.7,3.0,6.1,2.3\n"
VALID_JSON = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]})
VALID_JSONL = b"[5.1, 3.5, 1.4, 0.2]\n[6.2, 2.9, 4.3, 1.3]\n"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


VALID_NPY = npy_bytes(np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]))
SEEDS = [VALID_CSV, VALID_JSON.encode(), VALID_JSONL, VALID_NPY]
ODD = [
    b"",
    b" \n\t\r\n",
    b"\x00" * 64,
    b"\xef\xbb\xbf5.1,3.5,1.4,0.2\n",
    b'"5.1","3.5","1.4","0.2"\n"6.2\r",2.9,4.3,1.3\n',
    b'"unclosed,1,2,3\n',
    b"a,b,c,d\n",
    b"1,2,3,4\r1,2,3,4\r",
    b"1e400,-1e400,nan,inf\n",
    b"[" * 5000 + b"]" * 5000,
    b'{"instances": "no"}',
    b'{"inputs": [{"a": 1}, [1, 2]]}',
    b'[{"\\ud800": 1}]',
    b"[1, 2, 3, 4]\n{\n",
    b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2)}",
    npy_bytes(np.array(["a", "b"])),
    npy_bytes(np.zeros((2, 2, 2))),
    npy_bytes(np.zeros((0, 4))),
    npy_bytes(np.array([[1 + 2j, 0, 0, 0]])),
    "é,ü,ß,∞\n".encode(),
    "5,1;3,5;1,4;0,2\n".encode("utf-16"),
    b"1,2,3,4\n" * 3 + b"\x1d\x1e\x85\n",
    b",,,\n,,,\n",
    b"9" * 400 + b",1,2,3\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A seed body truncated, with bytes flipped, inserted or deleted, or repeated."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        kind = rng.choice(["truncate", "flip", "insert", "delete", "repeat"])
        at = rng.randrange(len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] = rng.randrange(256)
        elif kind == "insert":
            data[at:at] = rng.choice([b'"', b"\r", b"\n", b",", b"\x00", b"\xff", b"["])
        elif kind == "delete":
            del data[at : at + rng.randint(1, 8)]
        else:
            data = data[:at] * rng.randint(2, 50)
    return bytes(data)


def make_bodies(rng: random.Random) -> list[bytes]:
    bodies = list(ODD)
    while len(bodies) < BODIES:
        roll = rng.random()
        if roll < 0.25:
            size = rng.choice([1, 3, 16, 200, 4000])
            bodies.append(bytes(rng.randrange(256) for _ in range(size)))
        elif roll < 0.35:
            alphabet = b'0123456789.,-+eE\n\r" naiINF[]{}:'
            size = rng.choice([4, 40, 400])
            bodies.append(bytes(rng.choice(alphabet) for _ in range(size)))
        else:
            bodies.append(mutate(rng, rng.choice(SEEDS)))
    return bodies


def make_cases(rng: random.Random) -> list[dict]:
    cases = []
    for body in make_bodies(rng):
        for _ in range(PAIRS_PER_BODY):
            headers = {}
            for name, choices in (
                ("Content-Type", CONTENT_TYPES),
                ("Accept", ACCEPTS),
                ("X-Amzn-SageMaker-Custom-Attributes", CUSTOM_ATTRIBUTES),
            ):
                value = rng.choice(choices)
                if value is not None:
                    headers[name] = value
            cases.append({"body": body, "headers": headers})
    return cases


def send_all(port: int, cases: list[dict]) -> list[tuple[int, str, bytes]]:
    """Each case on a kept-alive connection per thread (reopened when the server
    closes it): (status, content type, body)."""

    def run(share: list[dict]) -> list[tuple[int, str, bytes]]:
        results = []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for case in share:
            conn.request("POST", "/invocations", case["body"], case["headers"])
            response = conn.getresponse()
            body = response.read()
            results.append((response.status, response.getheader("content-type"), body))
            if response.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        return results

    shares = [cases[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        per_thread = list(pool.map(run, shares))
    out: list[tuple[int, str, bytes]] = [None] * len(cases)  # type: ignore[list-item]
    for i, results in enumerate(per_thread):
        out[i::4] = results
    return out


def problem(case: dict, status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with one answer, or None."""
    if status >= 500:
        return f"status {status}"
    if content_type is None or "html" in content_type or body.lstrip()[:1] == b"<":
        return f"content type {content_type!r}"
    if status < 400:
        return None
    if content_type == "text/csv":
        if body.count(b"\n") != 1 or not body.strip():
            return "a CSV error is not one line"
        return None
    # JSON Lines errors are one JSON line; NPY's are JSON.
    if content_type not in ("application/json", "application/jsonlines"):
        return f"an error as {content_type!r}"
    error = json.loads(body)
    if not (error.get("detail") and error.get("code")):
        return "an error without detail and code"
    return None


@pytest.fixture(scope="module")
def server(iris_base, tmp_path_factory):
    """A server of its own: the fuzz's log lines stay out of the shared server's log,
    which other tests read."""
    server = ServeProcess(iris_base, tmp_path_factory.mktemp("fuzz"))
    server.start()
    yield server
    server.stop()


def test_fuzzed_invocations_never_fail_the_server(server):
    """Some 960 malformed requests: no 5xx, no HTML, every error says what was wrong,
    and the server is alive and right afterwards."""
    cases = make_cases(random.Random(SEED))
    answers = send_all(server.port, cases)
    problems = []
    for case, (status, content_type, body) in zip(cases, answers, strict=True):
        found = problem(case, status, content_type, body)
        if found:
            problems.append(
                f"{found}: {case['headers']} {case['body'][:80]!r} -> "
                f"{status} {content_type} {body[:200]!r}"
            )
    assert not problems, f"{len(problems)} of {len(cases)}:\n" + "\n".join(
        problems[:20]
    )
    statuses = {status for status, _, _ in answers}
    # The fuzz reaches the parsers, not only the negotiation in front of them.
    assert {HTTPStatus.OK, HTTPStatus.BAD_REQUEST} <= statuses
    assert HTTPStatus.UNSUPPORTED_MEDIA_TYPE in statuses
    status, _, _ = server.request("GET", "/ping")
    assert status == HTTPStatus.OK
    status, _, body = server.invoke(VALID_CSV, "text/csv", Accept="text/csv")
    assert status == HTTPStatus.OK
    assert body == b"0\n1\n2\n"
