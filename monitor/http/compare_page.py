"""The review page's shadow comparison: `GET /compare` (the table) and `GET /api/compare?source=&since=&until=`
(JSON), with `monitor compare`'s code (`monitor.compare`), so page, API and command line give the same figures.

Reading follows the review's read rules. The comparison reads the whole journal: it runs in the server's
thread pool (never on the event loop, which also serves /metrics), one at a time, and is reused until a
journal file changes (as the what-if page's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.commands import finite
from monitor.compare import compare, read_journal, table_rows
from monitor.http.control import Controller
from monitor.http.review import Access, BadRequest, JournalCache, _time_param, journal_api
from monitor.replay import ReplayError

Render = Callable[..., HTMLResponse]


@dataclass(frozen=True)
class CompareQuery:
    """One comparison request: which source (None: all) and the time range of the primary verdicts."""

    source: str | None = None
    since: float | None = None
    until: float | None = None


def parse_query(params: Mapping[str, str]) -> CompareQuery:
    """A comparison request's parameters; BadRequest names the one that is wrong."""
    return CompareQuery(source=(params.get("source") or "").strip() or None,
                        since=_time_param(params.get("since") or "", "since"),
                        until=_time_param(params.get("until") or "", "until"))


class ComparePage:
    """The comparison routes over one controller, with the review's access rules and page renderer."""

    def __init__(self, controller: Controller, access: Access, render: Render) -> None:
        self.controller = controller
        self.access = access
        self.render = render
        # One read at a time (seconds on a big journal), reused until a journal file changes.
        self._journal = JournalCache(read_journal)

    def routes(self) -> list[BaseRoute]:
        return [Route("/compare", self.page, methods=["GET"]), Route("/api/compare", self.api, methods=["GET"])]

    def compute(self, query: CompareQuery) -> tuple[dict[str, Any], list[list[str]]]:
        """(the API's answer, the table's rows); ReplayError when there is no journal."""
        journal = self._journal.get(self.controller.journal_path())
        result = compare(journal, source=query.source, since=query.since, until=query.until)
        # Counts only, never the journal's paths (the API names no path).
        return finite({"journal": journal.counts(), **result.to_json()}), table_rows(result)

    async def api(self, request: Request) -> Response:
        return await journal_api(request, self.access, parse_query, self.compute)

    async def page(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        answer, rows, error, status_code = None, [], None, 200
        query = CompareQuery()
        try:
            query = parse_query(request.query_params)
            answer, rows = await run_in_threadpool(self.compute, query)
        except BadRequest as exc:
            error, status_code = str(exc), 400
        except ReplayError as exc:
            error, status_code = str(exc), 404
        status = await run_in_threadpool(self.controller.status)
        sources = sorted({s["name"] for s in status["sources"]}
                         | {p["source"] for p in (answer or {}).get("pairings", [])})
        shadows = {s["name"]: s.get("shadow") for s in status["sources"] if s.get("shadow")}
        return self.render("compare.html", status_code, page="compare", query=query, answer=answer,
                           header=rows[0] if rows else [], rows=rows[1:], sources=sources, shadows=shadows,
                           error=error)
