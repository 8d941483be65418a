"""Content negotiation by SageMaker's rules.

Content-Type: its media type picks the parser; absent or ``application/octet-stream`` means
``SMSERVE['DEFAULT_CONTENT_TYPE']`` (``text/csv``).
Accept: the best supported entry of the list, by q-value; absent or ``*/*`` means
``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` if set, else the request's own type if a renderer
has it, else JSON.

A predictor that owns its input gets ``OwnedInputParser`` (any Content-Type, the raw
body); one that owns its output gets ``OwnedOutputRenderer`` (any Accept: the best
concrete type asked for, else the default above, is what its ``invoke()`` is told).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.request import Request

from modelapp import conf
from modelapp.exceptions import NotAcceptable, UnsupportedMediaType
from modelapp.formats import ALIASES, JSON, base_type, canonical
from modelapp.renderers import BaseBatchRenderer

GENERIC_TYPES = {"", "application/octet-stream"}
ANY = "*/*"


class OwnedInputParser(BaseParser):
    """Any Content-Type: the raw body, for a predictor that parses it itself."""

    media_type = ANY

    def parse(
        self,
        stream: IO[bytes],
        media_type: str | None = None,
        parser_context: Any = None,
    ) -> bytes:
        return stream.read() if stream is not None else b""


class OwnedOutputRenderer(BaseBatchRenderer):
    """Any Accept: the predictor renders its own body; only errors are rendered here
    (as JSON)."""

    media_type = ANY
    format = "owned"
    # Accept absent or */*: the request's own type first (False: JSON, as the official
    # scikit-learn container answers a script's default output).
    follows_content_type = True


def request_media_type(request: Request) -> str:
    """The request's media type as smserve names it (``formats.canonical``: aliases such
    as ``application/x-jsonlines`` included)."""
    media_type = base_type(request.content_type or "")
    if media_type in GENERIC_TYPES:
        media_type = conf.get("DEFAULT_CONTENT_TYPE")
    return canonical(media_type) or media_type


def parse_accept(header: str) -> list[str]:
    """Media ranges of an Accept header, best first (q-value, then specificity, then order);
    ranges with ``q=0`` are dropped."""
    ranked = []
    for position, part in enumerate(header.split(",")):
        media_range, *params = part.split(";")
        media_range = media_range.strip().lower()
        if not media_range:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        specificity = (
            0 if media_range == "*/*" else 1 if media_range.endswith("/*") else 2
        )
        ranked.append((-quality, -specificity, position, media_range))
    return [media_range for *_, media_range in sorted(ranked)]


def _matches(media_range: str, media_type: str) -> bool:
    if media_range == "*/*":
        return True
    if media_range.endswith("/*"):
        return media_type.startswith(media_range[:-1])
    return media_range == media_type


class SageMakerContentNegotiation(BaseContentNegotiation):
    """Picks the parser from Content-Type and the renderer from Accept (see module doc)."""

    def select_parser(self, request: Request, parsers: Sequence[Any]) -> Any:
        media_type = request_media_type(request)
        for parser in parsers:
            if parser.media_type in (media_type, ANY):
                return parser
        raise UnsupportedMediaType(media_type, [p.media_type for p in parsers])

    def default_accept(
        self, request: Request, follow_content_type: bool = True
    ) -> list[str]:
        default = conf.get("DEFAULT_ACCEPT")
        if default:
            return [base_type(default)]
        if not follow_content_type:
            return [JSON]
        return [request_media_type(request), JSON]

    def select_renderer(
        self,
        request: Request,
        renderers: Sequence[Any],
        format_suffix: str | None = None,
    ) -> tuple[Any, str]:
        header = request.META.get("HTTP_ACCEPT", "").strip()
        ranges = parse_accept(header) if header else ["*/*"]
        if len(renderers) == 1 and renderers[0].media_type == ANY:
            concrete = [r for r in ranges if not r.endswith("/*")]
            follow = getattr(renderers[0], "follows_content_type", True)
            return renderers[0], (concrete or self.default_accept(request, follow))[0]
        for media_range in ranges:
            # A bare wildcard means "whatever you would send by default".
            wanted = (
                [*self.default_accept(request), "*/*"]
                if media_range == "*/*"
                else [media_range]
            )
            for candidate in wanted:
                # An alias (application/parquet) is answered by its format's renderer,
                # under the name the client asked for.
                known = ALIASES.get(candidate, candidate)
                for renderer in renderers:
                    if _matches(known, renderer.media_type):
                        exact = known == renderer.media_type
                        return renderer, candidate if exact else renderer.media_type
        raise NotAcceptable(header, [r.media_type for r in renderers])


class FirstRendererNegotiation(BaseContentNegotiation):
    """Status endpoints answer JSON whatever the client asks for."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: Any, format_suffix: Any = None
    ) -> Any:
        return renderers[0], renderers[0].media_type
