"""``modelapp.middleware.InferenceMiddleware`` in-process: the inference views skip the
rest of the middleware chain and get the headers the skipped layers would have added;
every other path takes the chain."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.conf import settings
from django.core.exceptions import DisallowedHost, MiddlewareNotUsed
from django.http import HttpResponse
from django.test import Client, RequestFactory, override_settings

from modelapp.middleware import InferenceMiddleware

SANDBOX = "sandbox; default-src 'none'"  # every answer but the admin's
INFERENCE_PATHS = ["/ping", "/execution-parameters", "/invocations"]


class Chain:
    """The rest of the middleware chain: notes each request it is given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request):
        self.seen.append(request.path_info)
        return HttpResponse(b"from the chain", content_type="text/plain")


@pytest.fixture
def chain() -> Chain:
    return Chain()


@pytest.fixture
def middleware(chain) -> InferenceMiddleware:
    return InferenceMiddleware(chain)


@pytest.mark.parametrize("path", INFERENCE_PATHS)
def test_inference_views_skip_the_chain(middleware, chain, path):
    """/ping, /execution-parameters and /invocations are answered by their view, and the
    chain after the middleware never sees them."""
    method = "post" if path == "/invocations" else "get"
    request = getattr(RequestFactory(), method)(path)
    response = middleware(request)
    assert chain.seen == []
    assert response.content != b"from the chain"
    assert request.resolver_match.route == path.lstrip("/")


@pytest.mark.parametrize(
    "path", ["/admin/", "/admin/login/", "/nowhere", "/ping/", "/static/x.css"]
)
def test_other_paths_take_the_chain(middleware, chain, path):
    """Every other path, the admin and unknown paths included, goes through the chain
    and gets exactly its response."""
    response = middleware(RequestFactory().get(path))
    assert chain.seen == [path]
    assert response.content == b"from the chain"


def test_a_path_asked_again_gets_the_same_answer(middleware, chain):
    """Asking again gives the same answer (the match, or the refusal, is kept)."""
    for _ in range(3):
        middleware(RequestFactory().get("/execution-parameters"))
        middleware(RequestFactory().get("/nowhere"))
    assert chain.seen == ["/nowhere"] * 3


def test_headers_the_skipped_layers_add(middleware):
    """The rendered response has its Content-Length and X-Frame-Options: DENY, as
    CommonMiddleware and XFrameOptionsMiddleware would have set them."""
    response = middleware(RequestFactory().get("/execution-parameters"))
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Length"] == str(len(response.content))
    assert response["X-Frame-Options"] == "DENY"
    assert response["Content-Type"] == "application/json"


def test_allowed_hosts_still_apply(middleware):
    """The Host header is checked against ALLOWED_HOSTS, as CommonMiddleware would."""
    with override_settings(ALLOWED_HOSTS=["model.internal"]):
        with pytest.raises(DisallowedHost):
            middleware(RequestFactory().get("/ping", HTTP_HOST="evil.example"))


def test_switched_off_it_leaves_the_chain():
    """With the trick off (``FAST_PATHS_OFF``), Django drops the middleware."""
    with override_settings(
        SMSERVE={**settings.SMSERVE, "FAST_PATHS_OFF": {"inference_middleware"}}
    ):
        with pytest.raises(MiddlewareNotUsed):
            InferenceMiddleware(Chain())


def test_through_the_whole_stack_security_headers_are_kept():
    """Through Django's handler, an inference answer still carries SecurityMiddleware's
    headers (it sits before the short cut) and no cookie."""
    response = Client().get("/execution-parameters")
    assert response.status_code == HTTPStatus.OK
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert not response.cookies


@pytest.mark.parametrize("off", [frozenset(), frozenset({"inference_middleware"})])
def test_every_answer_but_the_admins_is_sandboxed(off):
    """With or without the short cut, an inference answer and a 404 carry
    ``sandbox; default-src 'none'``."""
    with override_settings(SMSERVE={**settings.SMSERVE, "FAST_PATHS_OFF": off}):
        client = Client()
        for path in ("/execution-parameters", "/nowhere"):
            assert client.get(path)["Content-Security-Policy"] == SANDBOX
