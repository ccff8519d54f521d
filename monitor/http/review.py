"""The review page and its JSON API: anomalies by source, time, label and score; a verdict; its evidence; labels.

Pages are rendered on the server from the package's Jinja2 templates (`templates/`), with one CSS and one small
script file (`static/`): no CDN, no build step, and every page works without the script.

Who may do what:
- Reading (pages, `/api/anomalies`, `/api/verdicts/ID`, `/evidence/ID`, `/originals/ID`) is open, unless the
  server is built with `read_token_required`: then it takes the API token, as `Authorization: Bearer` or as the
  session cookie that `/login` sets after the token is typed in once (a browser cannot send a header with an
  `<img>`).
- Labelling follows the write rules of every POST (`app.WritePolicy`): open on loopback without a token,
  the token whenever one is set, refused beyond loopback without one. The page's form may prove the token with
  the session cookie.
- Cross-site requests cannot label: a form post must carry an Origin (or, without one, a Referer) of this very
  server; the JSON API takes only `application/json` (which a foreign page cannot send without a CORS preflight
  this server never grants), and refuses a foreign Origin too.
- A request names a verdict by its id (32 hex digits) and nothing else; the evidence served is the file the
  journal's record names, and only when it lies inside `output.evidence` (a kept original: `output.originals`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from monitor import labels as labelling
from monitor.commands import parse_time
from monitor.http.control import Controller
from monitor.http.journal_index import Entry, JournalIndex, Label, Query
from monitor.replay import ReplayError, journal_files

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "monitor_session"
DEFAULT_PAGE = 24
MAX_PAGE = 500
MAX_FORM_BYTES = 16 * 1024  # a label and a note: anything bigger is not our form

Q = TypeVar("Q")
T = TypeVar("T")


class BadRequest(ValueError):
    """A query parameter or body that cannot be used (HTTP 400)."""


def session_value(token: str) -> str:
    """The session cookie's value for `token`: derived from it, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"anomaly-monitor review session", hashlib.sha256).hexdigest()


class Access:
    """Read and label permissions of one server: its token, whether it listens beyond loopback, and whether
    reading needs the token too."""

    def __init__(self, token: str | None, beyond_loopback: bool, read_token_required: bool) -> None:
        self.token = token
        self.beyond_loopback = beyond_loopback
        self.read_token_required = read_token_required

    def _holds_token(self, request: Request) -> bool:
        assert self.token is not None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session_value(self.token).encode())

    def can_read(self, request: Request) -> Response | None:
        """None when the request may read; otherwise the refusal (a page is sent to the login form)."""
        if not self.read_token_required or (self.token is not None and self._holds_token(request)):
            return None
        if self.token is None:
            return JSONResponse({"error": "reading needs the API token, and none is set"}, 403)
        if _wants_html(request):
            return RedirectResponse("/login?" + urlencode({"next": _local_next(request)}), 303)
        return JSONResponse({"error": "missing or wrong API token (Authorization: Bearer <token>)"}, 401,
                            headers={"WWW-Authenticate": 'Bearer realm="anomaly-monitor"'})

    def needs_token(self, request: Request) -> bool:
        """Whether a page should ask for the token: one is set and this request does not hold it."""
        return self.token is not None and not self._holds_token(request)

    async def form_post(self, request: Request, refused_event: str, max_fields: int,
                        keep_blank_values: bool = False) -> tuple[str, dict[str, list[str]]] | Response:
        """A page's form post, checked in order: same origin, allowed to write, small enough; then its fields.

        (`by` of the journal line, the parsed fields), or the refusal to send. Cross-site first: a foreign page
        learns nothing, not even whether what it names exists.
        """
        if not same_origin(request):
            log.warning("%s reason=cross_origin origin=%r", refused_event, request.headers.get("origin"))
            return JSONResponse({"error": "cross-origin form post refused"}, 403)
        by, refused = self.who_labels(request)
        if refused is not None:
            return refused
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return JSONResponse({"error": "form too large"}, 413)
        return by or "", parse_qs(body.decode("utf-8", "replace"), keep_blank_values=keep_blank_values,
                                  max_num_fields=max_fields)

    async def json_post(self, request: Request, shape: str) -> tuple[str | None, dict[str, Any]] | Response:
        """An API write, checked in order: allowed to write, not from a foreign origin, `application/json`
        (which a foreign page cannot send without a CORS preflight this server never grants), a JSON object
        of at most MAX_FORM_BYTES. (`by` of the journal line, the object), or the refusal to send; `shape`
        says in the refusal what object is expected."""
        by, refused = self.who_labels(request)
        if refused is not None:
            return refused
        if request.headers.get("origin") not in (None, "null") and not same_origin(request):
            return JSONResponse({"error": "cross-origin request refused"}, 403)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"error": "the body must be application/json"}, 415)
        body = await request.body()
        try:
            data = json.loads(body) if len(body) <= MAX_FORM_BYTES else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return JSONResponse({"error": f"the body must be a JSON object {shape}"}, 400)
        return by, data

    def who_labels(self, request: Request) -> tuple[str | None, Response | None]:
        """(`by` of the label line, None) when the request may label, else (None, the refusal)."""
        if self.token is None:
            if self.beyond_loopback:
                return None, JSONResponse({"error": "labelling is disabled: the server listens beyond loopback and "
                                                    "no API token is set"}, 403)
            return "local", None
        if self._holds_token(request):
            return "token", None
        client = request.client.host if request.client else "?"
        log.warning("http_unauthorized method=%s path=%s client=%s", request.method, request.url.path, client)
        return None, JSONResponse({"error": "missing or wrong API token (Authorization: Bearer <token>)"}, 401,
                                  headers={"WWW-Authenticate": 'Bearer realm="anomaly-monitor"'})


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/evidence/", "/originals/"))


def _local_next(request: Request) -> str:
    """Where the login form sends the browser back to: a path of this server, never another site."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def same_origin(request: Request) -> bool:
    """True when the request's Origin (or, without one, its Referer) is this server as the browser reached it."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if not referer:
            return False
        origin = referer
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


# --- parameters -----------------------------------------------------------------------------------------

def _time_param(value: str, name: str) -> float | None:
    """Unix seconds, or an ISO 8601 time (without a zone: this machine's local time, as the page shows it)."""
    # The command line's parser: a time typed on the page means what it means to `monitor compare` or `replay`.
    return _float_param(value, name, lambda text: parse_time(text, name), "a time (Unix seconds or ISO 8601)")


def _float_param(value: str, name: str, parse: Callable[[str], float] = float,
                 expected: str = "a number") -> float | None:
    """`parse(value)`, None for a blank value; BadRequest when `parse` refuses it (ValueError) or it is not finite."""
    value = value.strip()
    if not value:
        return None
    try:
        number = parse(value)
    except ValueError:
        raise BadRequest(f"{name}: not {expected}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name}: not a finite number")
    return number


def _int_param(value: str, name: str, default: int, low: int, high: int) -> int:
    value = value.strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}: not an integer") from None
    if not low <= number <= high:
        raise BadRequest(f"{name}: must be {low} to {high}")
    return number


def parse_query(params: Any, default_limit: int = 50) -> Query:
    """The filters and paging of an anomalies request; BadRequest names the parameter that is wrong."""
    label = params.get("label", "").strip() or None
    if label is not None and label != "none" and label not in labelling.LABELS:
        raise BadRequest(f"label: one of none, {', '.join(labelling.LABELS)}")
    before = params.get("before", "").strip() or None
    if before is not None and not labelling.is_verdict_id(before):
        raise BadRequest("before: a verdict id (32 hex digits)")
    return Query(
        source=params.get("source", "").strip() or None,
        since=_time_param(params.get("since", ""), "since"),
        until=_time_param(params.get("until", ""), "until"),
        label=label,
        min_score=_float_param(params.get("min_score", ""), "min_score"),
        max_score=_float_param(params.get("max_score", ""), "max_score"),
        limit=_int_param(params.get("limit", ""), "limit", default_limit, 1, MAX_PAGE),
        offset=_int_param(params.get("offset", ""), "offset", 0, 0, 10**7),
        before=before,
    )


async def journal_api(request: Request, access: Access, parse: Callable[[Mapping[str, str]], Q],
                      compute: Callable[[Q], tuple[dict[str, Any], Any]]) -> Response:
    """A JSON API over the whole journal (`/api/compare`, `/api/whatif`): the read rules, then the first item of
    `compute(parse(query parameters))`; 400 for a parameter either refuses (BadRequest), 404 for ReplayError (no
    journal)."""
    refused = access.can_read(request)
    if refused is not None:
        return refused
    try:
        # Seconds on a big journal: in the thread pool, never on the event loop (it also serves /metrics).
        answer, _ = await run_in_threadpool(compute, parse(request.query_params))
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, 400)
    except ReplayError as exc:
        return JSONResponse({"error": str(exc)}, 404)
    return JSONResponse(answer)


class JournalCache(Generic[T]):
    """The journal (with its rotated files) as `read` returned it, read again only when a file changed: a line
    appended, a rotation (a new inode under a name). One read at a time: a request that waited reuses it."""

    def __init__(self, read: Callable[[Path], T]) -> None:
        self.read = read
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._value: T | None = None

    def get(self, journal: Path) -> T:
        """`read(journal)`, or the last result while no journal file has changed since."""
        with self._lock:
            signature = _signature(journal)
            if self._value is None or signature != self._signature:
                self._value = self.read(journal)
                self._signature = signature
            return self._value


def _signature(journal: Path) -> tuple:
    out = []
    for path in journal_files(journal):
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


# --- views --------------------------------------------------------------------------------------------

def evidence_url(entry: Entry) -> str | None:
    return f"/evidence/{entry.id}" if entry.evidence else None


def original_url(entry: Entry) -> str | None:
    return f"/originals/{entry.id}" if entry.original else None


def verdict_json(entry: Entry, label: Label | None) -> dict[str, Any]:
    """A verdict as the API answers it: id, the journal record, its latest label, the URLs to see it."""
    return {"id": entry.id, "record": entry.record(), "label": label.as_dict() if label else None,
            "evidence_url": evidence_url(entry), "original_url": original_url(entry), "url": f"/verdicts/{entry.id}"}


def _fmt_time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _input_time(value: float | None) -> str:
    """A time as an `<input type=datetime-local>` value (this machine's local time)."""
    return "" if value is None else datetime.fromtimestamp(value).strftime("%Y-%m-%dT%H:%M")


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _fmt_time
    env.filters["num"] = _fmt_num
    env.filters["input_time"] = _input_time
    return env


class Review:
    """The review routes over one controller and journal index."""

    def __init__(self, controller: Controller, access: Access, index: JournalIndex | None = None) -> None:
        self.controller = controller
        self.access = access
        self.index = index if index is not None else JournalIndex(controller.journal_path())
        self.env = templates()
        # Every source's label counters exist from the start, at 0: Prometheus's increase() cannot count a
        # series' first sample, so a counter born at 1 with the first label would never show that label.
        for source in controller.status().get("sources", []):
            for name in labelling.LABELS:
                labelling.LABELS_TOTAL.labels(source["name"], name)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.overview, methods=["GET"]),
            Route("/anomalies", self.gallery, methods=["GET"]),
            Route("/verdicts/{vid}", self.detail, methods=["GET"]),
            Route("/verdicts/{vid}/label", self.label_form, methods=["POST"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/api/anomalies", self.api_anomalies, methods=["GET"]),
            Route("/api/verdicts/{vid}", self.api_verdict, methods=["GET"]),
            Route("/api/verdicts/{vid}/label", self.api_label, methods=["POST"]),
            Route("/evidence/{vid}", self.evidence, methods=["GET"]),
            Route("/originals/{vid}", self.original, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    # --- shared ----------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        self.index.refresh()
        for source, value in self.index.precision().items():
            labelling.LABELLED_PRECISION.labels(source).set(value)

    def _lookup(self, vid: str) -> tuple[Entry, Label | None] | None:
        if not labelling.is_verdict_id(vid):
            return None  # never looked up, never a path: only 32 hex digits name a verdict
        self._refresh()
        return self.index.verdict(vid)

    def _render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status_code, headers={
            # Pages load only their own CSS, script and images; no frame may hold them (clickjacking a label).
            "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                       "frame-ancestors 'none'; form-action 'self'",
            "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"})

    def label(self, vid: str, label: Any, note: Any, by: str) -> tuple[dict | None, Response | None]:
        """Validate and journal one label; (the label line, None) or (None, the refusal)."""
        found = self._lookup(vid)
        if found is None:
            primary = self.index.shadow_of(vid) if labelling.is_verdict_id(vid) else None
            if primary is not None:  # labels judge what the line decided: a candidate's verdict has none
                return None, JSONResponse({"error": f"{vid!r} is a shadow verdict: label its primary verdict "
                                                    f"{primary!r} instead", "primary": primary or None}, 400)
            return None, JSONResponse({"error": f"no verdict {vid!r} (unknown, or older than the index keeps)"}, 404)
        entry, _ = found
        try:
            checked = labelling.check_label(label, entry.anomaly)
            record = labelling.label_record(vid, checked, labelling.clean_note(note), by)
        except labelling.LabelRefused as exc:
            return None, JSONResponse({"error": str(exc)}, 400)
        try:
            self.controller.append_journal(record)
        except OSError as exc:
            log.error("label_write_failed verdict=%s label=%s error=%s", vid, checked,
                      (exc.strerror or type(exc).__name__).replace(" ", "_"))
            # The line stays queued in the journal and is written with its next write: retrying only repeats it.
            return None, JSONResponse({"error": "the journal refuses writes now; the label is held and will be "
                                                "written when it accepts them", "queued": True}, 503)
        labelling.LABELS_TOTAL.labels(entry.source, checked).inc()
        self._refresh()
        log.info("label_written verdict=%s source=%s label=%s by=%s", vid, entry.source, checked, by)
        return record, None

    # --- JSON API --------------------------------------------------------------------------------------
    def api_anomalies(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        try:
            query = parse_query(request.query_params)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        self._refresh()
        page = self.index.anomalies(query)
        items = [verdict_json(e, page.labels.get(e.id)) for e in page.entries]
        return JSONResponse({"items": items, "total": page.total, "limit": query.limit, "offset": query.offset,
                             "next": page.entries[-1].id if page.more and page.entries else None})

    def api_verdict(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        found = self._lookup(request.path_params["vid"])
        if found is None:
            return JSONResponse({"error": "no such verdict"}, 404)
        return JSONResponse(verdict_json(*found))

    async def api_label(self, request: Request) -> Response:
        checked = await self.access.json_post(request, '{"label": ..., "note": ...}')
        if isinstance(checked, Response):
            return checked
        by, data = checked
        vid = request.path_params["vid"]
        # The journal write and its fsync block: off the event loop, as every other controller call.
        record, refused = await run_in_threadpool(self.label, vid, data.get("label"), data.get("note"), by or "")
        if refused is not None:
            return refused
        return JSONResponse({"verdict": vid, "label": record})

    def evidence(self, request: Request) -> Response:
        return self._serve(request, "evidence", self.controller.evidence_folder())

    def original(self, request: Request) -> Response:
        return self._serve(request, "original", self.controller.originals_folder())

    def _serve(self, request: Request, what: str, folder_path: Path) -> Response:
        """The verdict's evidence or kept original, by verdict id, only from inside its folder."""
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        found = self._lookup(request.path_params["vid"])
        missing = JSONResponse({"error": f"no {what} for this verdict"}, 404)
        named = getattr(found[0], what) if found is not None else None
        if not named:
            return missing
        folder = os.path.realpath(folder_path)
        path = os.path.realpath(named)
        # The journal is ours, but a hand-edited line must not make this server read outside its folder.
        if os.path.commonpath([folder, path]) != folder or path == folder or not os.path.isfile(path):
            return missing
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        # nosniff: a kept file is served as what its name says, never sniffed into HTML by a browser.
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                             "X-Content-Type-Options": "nosniff"})

    # --- pages -----------------------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        self._refresh()
        status = self.controller.status()
        counts = self.index.counts()
        precision = self.index.precision()
        cameras = {c["name"]: c for c in status.get("cameras", [])}
        rows = []
        for source in status.get("sources", []):
            name = source["name"]
            threshold = status.get("thresholds", {}).get(name, {})
            value, calibrated = threshold.get("value"), threshold.get("calibrated")
            camera = cameras.get(name)
            rows.append({
                "name": name, "kind": source.get("kind"), "state": source.get("state"), "model": source.get("model"),
                "counts": counts.get(name, {"per_minute": 0.0, "anomalies_hour": 0, "anomalies_shift": 0}),
                "threshold": value, "calibrated": calibrated, "mode": threshold.get("mode"),
                "ratio": value / calibrated if value is not None and calibrated else None,
                "camera": None if camera is None else ("up" if camera.get("up") else "down"),
                "precision": precision.get(name),
            })
        return self._render("overview.html", rows=rows, ready=status.get("ready"), page="overview",
                            queue=status.get("queue", {}), now=time.time())

    def gallery(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        try:
            query = parse_query(request.query_params, default_limit=DEFAULT_PAGE)
            error = None
        except BadRequest as exc:
            query, error = Query(limit=DEFAULT_PAGE), str(exc)
        self._refresh()
        page = self.index.anomalies(query)
        kept = {k: v for k, v in request.query_params.items() if k not in ("before", "offset") and v}
        older = None
        if page.more and page.entries:
            older = "/anomalies?" + urlencode({**kept, "before": page.entries[-1].id})
        newest = "/anomalies?" + urlencode(kept) if (query.before or query.offset) else None
        sources = sorted(set(self.index.sources()) | {s["name"] for s in self.controller.status()["sources"]})
        return self._render("anomalies.html", page="anomalies", entries=page.entries, labels=page.labels,
                            total=page.total, query=query, sources=sources, older=older, newest=newest,
                            error=error, label_names=labelling.LABELS, status_code=400 if error else 200)

    def detail(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        found = self._lookup(request.path_params["vid"])
        if found is None:
            return self._render("missing.html", 404, page="verdict")
        entry, label = found
        choices = ([(labelling.DEFECT, "Defect"), (labelling.FALSE_ALARM, "False alarm")] if entry.anomaly
                   else [(labelling.MISSED_DEFECT, "Missed defect")])
        return self._render("verdict.html", page="verdict", entry=entry, label=label, choices=choices,
                            record=json.dumps(entry.record(), indent=2), saved=request.query_params.get("saved"),
                            needs_token=self.access.needs_token(request),
                            max_note=labelling.MAX_NOTE_CHARS)

    async def label_form(self, request: Request) -> Response:
        checked = await self.access.form_post(request, "label_refused", max_fields=8, keep_blank_values=True)
        if isinstance(checked, Response):
            return checked
        by, form = checked
        vid = request.path_params["vid"]
        _record, refused = await run_in_threadpool(self.label, vid, (form.get("label") or [None])[0],
                                                   (form.get("note") or [""])[0], by)
        if refused is not None:
            return refused
        return RedirectResponse(f"/verdicts/{vid}?saved=1", 303)

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only a path of this server: the form must not send anyone elsewhere
        if request.method == "GET":
            return self._render("login.html", page="login", target=target, error=None)
        if not same_origin(request):
            return JSONResponse({"error": "cross-origin form post refused"}, 403)
        body = await request.body()
        form = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), max_num_fields=4)
        given = (form.get("token") or [""])[0].strip()
        token = self.access.token
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("login_refused client=%s", request.client.host if request.client else "?")
            return self._render("login.html", 401, page="login", target=target, error="wrong token")
        response = RedirectResponse(target, 303)
        response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        return response
