"""The Starlette app: Prometheus exposition, health endpoints as Prometheus has them, the JSON API, and the
review page with its API (`review`: anomalies, verdicts, evidence, labels; `whatif`: the what-if threshold
panel and applying a threshold).

Reads (GET) are open (the review's reads take the token too when the server is built with
`read_token_required`). Writes (POST) need `Authorization: Bearer <token>` whenever a token is set, and a
token must be set for them to work at all when the server listens beyond loopback. Every handler that calls
the controller is a plain function: Starlette runs it in its thread pool, so a slow reload never holds up a
scrape of /metrics.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor import metrics
from monitor.http.compare_page import ComparePage
from monitor.http.control import Controller, NotPausable
from monitor.http.journal_index import JournalIndex
from monitor.http.review import Access, Review
from monitor.http.whatif import WhatIf

log = logging.getLogger(__name__)

TOKEN_ENV = "MONITOR_API_TOKEN"


@dataclass(frozen=True)
class WritePolicy:
    """Who may POST: anyone (token None, required False), holders of `token`, or nobody (required, no token)."""

    token: str | None
    required: bool  # bound beyond loopback: without a token, writes are refused

    def check(self, request: Request) -> Response | None:
        """None when the request may write; otherwise the response that refuses it."""
        if self.token is None:
            if not self.required:
                return None
            return JSONResponse({"error": f"write actions are disabled: the server listens beyond loopback and "
                                          f"no API token is set ({TOKEN_ENV} or the token file)"}, 403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest on bytes: constant time whatever the given token holds (non-ASCII too).
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            client = request.client.host if request.client else "?"
            log.warning("http_unauthorized method=%s path=%s client=%s", request.method, request.url.path, client)
            return JSONResponse({"error": "missing or wrong API token (Authorization: Bearer <token>)"}, 401,
                                headers={"WWW-Authenticate": 'Bearer realm="anomaly-monitor"'})
        return None


class _Metrics:
    """prometheus_client's own ASGI app (content negotiation, gzip, name[] filters, as its http server had),
    held by an object so that Starlette routes to it as an ASGI app rather than as a request handler."""

    def __init__(self) -> None:
        self._app: ASGIApp = make_asgi_app(metrics.REGISTRY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def build_app(controller: Controller, policy: WritePolicy, read_token_required: bool = False,
              index: JournalIndex | None = None) -> Starlette:
    """The app of the one HTTP server, over `controller`; `index` is the review's journal index (one over the
    controller's journal when None)."""

    def healthy(_request: Request) -> Response:
        return PlainTextResponse("Healthy.\n")

    def ready(_request: Request) -> Response:
        if controller.ready():
            return PlainTextResponse("Ready.\n")
        return PlainTextResponse("Not ready.\n", 503)

    def status(_request: Request) -> Response:
        return JSONResponse(controller.status())

    def source_action(action: str, call: Callable[[str], None]) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            refused = policy.check(request)
            if refused is not None:
                return refused
            name = request.path_params["name"]
            try:
                call(name)
            except KeyError:
                return JSONResponse({"error": f"no source called {name!r}"}, 404)
            except NotPausable as exc:
                return JSONResponse({"error": str(exc)}, 409)
            state = next((s["state"] for s in controller.status()["sources"] if s["name"] == name), None)
            log.info("http_source_action action=%s source=%s state=%s", action, name, state)
            return JSONResponse({"source": name, "state": state})

        return handler

    def reload(request: Request) -> Response:
        refused = policy.check(request)
        if refused is not None:
            return refused
        ok, message = controller.reload()
        log.info("http_reload ok=%s message=%r", ok, message)
        if ok:
            return JSONResponse({"ok": True, "message": message})
        return JSONResponse({"ok": False, "error": message}, 500)

    routes = [
        Route("/metrics", _Metrics(), methods=["GET"]),
        Route("/-/healthy", healthy, methods=["GET"]),
        Route("/-/ready", ready, methods=["GET"]),
        Route("/-/reload", reload, methods=["POST"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/sources/{name}/pause", source_action("pause", controller.pause), methods=["POST"]),
        Route("/api/sources/{name}/resume", source_action("resume", controller.resume), methods=["POST"]),
    ]
    access = Access(token=policy.token, beyond_loopback=policy.required, read_token_required=read_token_required)
    review = Review(controller, access, index)
    routes.extend(review.routes())
    routes.extend(WhatIf(controller, access, review._render).routes())
    routes.extend(ComparePage(controller, access, review._render).routes())
    return Starlette(routes=routes)
