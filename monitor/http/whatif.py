"""The review page's what-if panel: the journal's scores replayed through another threshold setting
(`monitor.replay`), and applying a chosen setting to the running daemon.

- `GET /whatif` (the panel) and `GET /api/whatif?source=&quantile=&margin=&window=&fixed=&learn_from_anomalies=
  &since=&until=&limit=` replay the daemon's journal with the settings given (a blank or absent one stays as
  the config has it) and answer, per source and overall, the journal's recorded outcome beside the what-if
  one, and the verdicts that would flip. Reading follows the review's read rules.
- `POST /api/threshold` (JSON) and `POST /whatif/apply` (the panel's form) write the setting into the config
  file (`monitor.replay.apply_threshold`: only those keys' lines change), journal a `threshold_changed` event
  through the running daemon's journal, and reload the daemon. They follow the label write rules (the token
  beyond loopback, same origin for the form, JSON only for the API). An invalid setting is 400 and nothing is
  written.

A replay reads the whole journal and runs every verdict through a `Threshold`: seconds on a big journal. It
runs in the server's thread pool (never on the event loop, which also serves /metrics), one at a time, and
reuses the journal it read while no journal file has changed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from monitor.commands import finite
from monitor.config import ConfigError, ThresholdConfig
from monitor.http.control import Controller
from monitor.http.review import Access, BadRequest, JournalCache, _int_param, _time_param, journal_api
from monitor.replay import (
    THRESHOLD_KEYS,
    JournalRecords,
    ReplayError,
    ReplayResult,
    apply_threshold,
    read_records,
    replay,
    threshold_changed_event,
)

log = logging.getLogger(__name__)

# The settings a request may change: the config's threshold keys, nothing else.
SETTING_KEYS: tuple[str, ...] = ("quantile", "margin", "window", "fixed", "learn_from_anomalies")
assert set(SETTING_KEYS) == set(THRESHOLD_KEYS), "the what-if form must offer every threshold key"
QUERY_KEYS = (*SETTING_KEYS, "source", "since", "until", "run")
DEFAULT_FLIPS = 200  # flipping verdicts listed on the page; the API takes `limit` up to MAX_FLIPS
MAX_FLIPS = 10_000
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

Render = Callable[..., HTMLResponse]


# --- settings ------------------------------------------------------------------------------------------


def _text_number(value: str, key: str) -> float | int:
    try:
        number: float | int = int(value) if key == "window" else float(value)
    except ValueError:
        raise BadRequest(f"{key}: not {'an integer' if key == 'window' else 'a number'}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{key}: not a finite number")
    return number


def _mutually_exclusive(changes: dict[str, Any]) -> dict[str, Any]:
    """A quantile drops a fixed threshold and a fixed threshold drops the quantile, as `monitor replay`'s
    flags do; both at once is refused."""
    if changes.get("fixed") is not None and changes.get("quantile") is not None:
        raise BadRequest("fixed, quantile: set either a fixed threshold or a quantile, not both")
    if changes.get("fixed") is not None:
        changes.setdefault("quantile", None)
    if changes.get("quantile") is not None:
        changes.setdefault("fixed", None)
    return changes


def changes_from_text(params: Mapping[str, str]) -> dict[str, Any]:
    """The threshold keys a query string or form sets. A blank field is not a change: the config's value
    stays (the panel's fields start blank, so an untouched one never overrides the config)."""
    changes: dict[str, Any] = {}
    for key in SETTING_KEYS:
        value = (params.get(key) or "").strip()
        if not value:
            continue
        if key == "learn_from_anomalies":
            if value.lower() not in _TRUE + _FALSE:
                raise BadRequest(f"{key}: yes or no")
            changes[key] = value.lower() in _TRUE
        else:
            changes[key] = _text_number(value, key)
    return _mutually_exclusive(changes)


def changes_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """The threshold keys a JSON body sets: a number (or a number as text), true/false for
    learn_from_anomalies, or null to remove the key from the config (the bundle's value or the default)."""
    unknown = sorted(set(data) - set(SETTING_KEYS))
    if unknown:
        raise BadRequest(f"{', '.join(unknown)}: not threshold settings (known: {', '.join(SETTING_KEYS)})")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            changes[key] = None
        elif key == "learn_from_anomalies":
            if not isinstance(value, bool):
                raise BadRequest(f"{key}: true or false")
            changes[key] = value
        elif isinstance(value, str):
            changes[key] = _text_number(value.strip(), key)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):  # True is an int to Python
            raise BadRequest(f"{key}: not a number")
        elif key == "window" and not float(value).is_integer():
            raise BadRequest(f"{key}: not an integer")
        elif not math.isfinite(value):
            raise BadRequest(f"{key}: not a finite number")
        else:
            changes[key] = int(value) if key == "window" else float(value)
    return _mutually_exclusive(changes)


def settings_for(base: ThresholdConfig, changes: Mapping[str, Any]) -> ThresholdConfig:
    """`base` with `changes`, checked as the config's threshold section is; BadRequest names the key."""
    try:
        return ThresholdConfig.model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"]) or "fixed, quantile"
        raise BadRequest(f"{key}: {err['msg']}") from None


# --- the replay -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIfQuery:
    """One what-if request: the setting changes, which source (None: all), the time range, flips listed."""

    changes: dict[str, Any]
    source: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = DEFAULT_FLIPS


def parse_query(params: Mapping[str, str], default_limit: int = DEFAULT_FLIPS) -> WhatIfQuery:
    """A what-if request's parameters; BadRequest names the one that is wrong."""
    return WhatIfQuery(
        changes=changes_from_text(params),
        source=(params.get("source") or "").strip() or None,
        since=_time_param(params.get("since") or "", "since"),
        until=_time_param(params.get("until") or "", "until"),
        limit=_int_param(params.get("limit") or "", "limit", default_limit, 0, MAX_FLIPS),
    )


@dataclass
class Applied:
    """The last setting applied through this server, for the panel to say what happened."""

    time: float
    by: str
    detail: str
    written: bool
    journal: str  # "written", "queued" (the journal refused it for now), or "-" when nothing was written
    reload_ok: bool | None
    reload_message: str


class WhatIf:
    """The what-if routes over one controller, with the review's access rules and page renderer."""

    def __init__(self, controller: Controller, access: Access, render: Render) -> None:
        self.controller = controller
        self.access = access
        self.render = render
        self._journal = JournalCache(read_records)  # shared by every replay until the journal changes
        # One apply at a time: the config write, its journal line and the reload belong together.
        self._apply_lock = threading.Lock()
        self.last_applied: Applied | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/whatif", self.page, methods=["GET"]),
            Route("/whatif/apply", self.apply_form, methods=["POST"]),
            Route("/api/whatif", self.api_whatif, methods=["GET"]),
            Route("/api/threshold", self.api_threshold, methods=["POST"]),
        ]

    # --- computing (in the thread pool) ------------------------------------------------------------------
    def _records(self) -> JournalRecords:
        return self._journal.get(self.controller.journal_path())

    def compute(self, query: WhatIfQuery) -> tuple[dict[str, Any], ReplayResult]:
        """The what-if's figures as the API answers them, and the result (for the page's flip list).
        BadRequest for a setting or source that cannot be used; ReplayError when there is no journal."""
        base = self.controller.threshold_settings()
        settings = settings_for(base, query.changes)
        records = self._records()
        known = {r.source for r in records.verdicts} | {s["name"] for s in self.controller.status()["sources"]}
        if query.source is not None and query.source not in known:
            raise BadRequest(f"source: no source {query.source!r} in the journal or the config")
        calibration = self.controller.calibrations()
        result = replay(records, settings, calibration, source=query.source, since=query.since, until=query.until)
        if settings.fixed is None:
            for name, item in result.sources.items():
                if name not in calibration:
                    item.notes.append("no calibration in the daemon for this source (a source no longer "
                                      "configured?)")
        out = result.to_json()
        out["flips"] = result.to_anomaly + result.to_normal
        for name, item in result.sources.items():
            out["sources"][name]["flips"] = item.to_anomaly + item.to_normal
        changed = [{"id": c.id, "source": c.source, "time": c.time, "score": c.score,
                    "recorded_threshold": c.recorded_threshold, "threshold": c.threshold, "anomaly": c.anomaly,
                    "url": f"/verdicts/{c.id}" if c.id else None} for c in result.changed[:query.limit]]
        answer = {
            # Counts only, never the journal's paths (the API names no path).
            "journal": {"files": len(records.files), "verdicts": len(records.verdicts),
                        "labels": len(records.labels), "threshold_changes": records.threshold_changes,
                        "bad_lines": records.bad_lines},
            "config": base.model_dump(),
            "changes": query.changes,
            "source": query.source,
            **out,
            "changed": changed,
            "changed_total": len(result.changed),
        }
        return finite(answer), result

    def apply(self, changes: dict[str, Any], by: str) -> tuple[int, dict[str, Any]]:
        """Write `changes` into the config file, journal them and reload: (HTTP status, answer)."""
        if not changes:
            return 400, {"error": "no setting to apply (quantile, margin, window, fixed, learn_from_anomalies)"}
        try:
            settings_for(self.controller.threshold_settings(), changes)
        except BadRequest as exc:
            return 400, {"error": str(exc)}
        path = self.controller.config_path()
        if path is None:
            return 409, {"error": "the daemon was started without a config file: there is nothing to write to"}
        with self._apply_lock:
            try:
                change = apply_threshold(path, changes, by)
            except (ConfigError, ReplayError, ValueError) as exc:
                # The setting itself was checked above: what is refused here is the file (edited meanwhile
                # into something invalid, or laid out so that it cannot be edited in place).
                log.warning("threshold_apply_refused file=%s error=%s", path, str(exc).replace("\n", "; "))
                return 409, {"error": str(exc)}
            except OSError as exc:
                log.error("threshold_apply_failed file=%s error=%s", path, exc)
                return 500, {"error": f"{path.name}: cannot write: {exc.strerror or type(exc).__name__}"}
            event = threshold_changed_event(change)
            if not change.changed:
                self.last_applied = Applied(time.time(), by, "unchanged", False, "-", None, "nothing to reload")
                return 200, {"written": False, "changed": {}, "old": change.old, "new": change.new, "by": by,
                             "journal": None, "reload": None, "message": "threshold unchanged, nothing written"}
            journal = "written"
            try:
                self.controller.append_journal(event)
            except OSError as exc:
                # The config is written: a journal refusing writes now must not hide that. The line stays
                # queued in the daemon's journal and goes out with its next write.
                journal = "queued"
                log.error("threshold_changed_not_journaled error=%s", exc.strerror or type(exc).__name__)
            ok, message = self.controller.reload()
            log.info("threshold_applied by=%s %s journal=%s reload_ok=%s", by, event["detail"], journal, ok)
            self.last_applied = Applied(event["time"], by, event["detail"], True, journal, ok, message)
        answer = {"written": True, "changed": {k: list(v) for k, v in change.changed.items()}, "old": change.old,
                  "new": change.new, "by": by, "detail": event["detail"], "journal": journal,
                  "reload": {"ok": ok, "message": message}}
        return (200 if ok else 500), finite(answer)

    # --- JSON API ------------------------------------------------------------------------------------
    async def api_whatif(self, request: Request) -> Response:
        return await journal_api(request, self.access, lambda params: parse_query(params, default_limit=MAX_FLIPS),
                                 self.compute)

    async def api_threshold(self, request: Request) -> Response:
        checked = await self.access.json_post(
            request, '{"quantile": ..., "margin": ..., "window": ..., "fixed": ..., "learn_from_anomalies": ...}')
        if isinstance(checked, Response):
            return checked
        by, data = checked
        try:
            changes = changes_from_json(data)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, 400)
        status, answer = await run_in_threadpool(self.apply, changes, by)
        return JSONResponse(answer, status)

    # --- the panel -----------------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        refused = self.access.can_read(request)
        if refused is not None:
            return refused
        params = request.query_params
        run = any(k in params for k in QUERY_KEYS)
        answer = result = None
        error = None
        status_code = 200
        try:
            query = parse_query(params)
            if run:
                answer, result = await run_in_threadpool(self.compute, query)
        except BadRequest as exc:
            query, error, status_code = WhatIfQuery(changes={}), str(exc), 400
        except ReplayError as exc:
            error, status_code = str(exc), 404
        return await self._page(request, query, answer, result, error, status_code,
                                applied=params.get("applied") == "1")

    async def _page(self, request: Request, query: WhatIfQuery, answer: dict | None, result: ReplayResult | None,
                    error: str | None, status_code: int, applied: bool = False) -> Response:
        status = await run_in_threadpool(self.controller.status)
        sources = sorted({s["name"] for s in status["sources"]} | set((answer or {}).get("sources", {})))
        form = {k: request.query_params.get(k, "") for k in QUERY_KEYS}
        return self.render(
            "whatif.html", status_code, page="whatif", query=query, form=form, sources=sources, answer=answer,
            changed=(result.changed[:query.limit] if result is not None else []), error=error,
            config=self.controller.threshold_settings(), applied=applied, last=self.last_applied,
            apply_fields={k: _form_value(v) for k, v in query.changes.items() if v is not None},
            needs_token=self.access.needs_token(request),
            can_apply=self.controller.config_path() is not None)

    async def apply_form(self, request: Request) -> Response:
        # A foreign page must not change the line's threshold through a browser.
        checked = await self.access.form_post(request, "threshold_refused", max_fields=16)
        if isinstance(checked, Response):
            return checked
        by, fields = checked
        form = {k: v[0] for k, v in fields.items()}
        try:
            changes = changes_from_text(form)
        except BadRequest as exc:
            status, answer = 400, {"error": str(exc)}
        else:
            status, answer = await run_in_threadpool(self.apply, changes, by)
        if "error" in answer:
            return await self._page(request, WhatIfQuery(changes={}), None, None, answer["error"], status)
        return RedirectResponse("/whatif?applied=1", 303)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)  # repr's shortest round-trip spelling: 0.9995 stays 0.9995
