"""The dashboard's web application (Starlette): the page, its static files, and the API the
page calls.

- ``GET /`` and ``GET /runs/{name}``: the page (one HTML file; its script reads the API);
- ``GET /static/...``: the page's script, style and chart library (uPlot), shipped with runner;
- ``GET /api/runs``: every served run, with its state and best score;
- ``GET /api/runs/{name}``: one run: ``status.json`` (plus ``alive``), the control file, ``results.json``;
- ``GET /api/runs/{name}/stream``: server-sent events: ``log`` (new event-log lines, as a JSON
  array), ``run`` (the above, when it changes), ``reset`` (the log was made anew);
- ``POST /api/runs/{name}/orders``: a change, as ``runner nudge`` makes it (``{"trial": 3 or
  null, "settings": {"lr": 0.005}, "action": {"do": "rollback", "to": "best"}}``); answers the
  SHA-256 of the control file written and the run's reads before it, by which the page finds
  the run's verdict in ``status.json``.

Every ``/api`` request needs the server's token (header ``X-Runner-Token``; the event stream,
which a browser opens without headers, may give it as ``?token=``), and a request another
site's page makes (an ``Origin`` that is not this server's, or ``Sec-Fetch-Site:
cross-site``) is refused; ``Host`` must name this server (``TrustedHostMiddleware``), against
DNS rebinding. Orders must be ``application/json``, which a form on another page cannot send.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from runner.control.file import ControlError, trial_id
from runner.control.nudge import Change, check_change, control_schema, write_change
from runner.dashboard.runs import EVENTS_FILE, LogTail, ServedRuns, details, summary
from runner.errors import RunnerError

STATIC = Path(__file__).parent / "static"
POLL = 0.2  # seconds between looks at a run's files while a page watches it
LOG_BATCH = 5000  # event-log lines in one message
ACTIONS = ("pause", "resume", "stop", "checkpoint", "rollback")
ORDER_BODY_LIMIT = 64 << 10


class Refused(Exception):
    """A request the API answers with ``status`` and a message, not a traceback."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(runs: ServedRuns, token: str, *, hosts: list[str], origins: list[str]) -> Starlette:
    """The dashboard for ``runs``. ``hosts``: the ``Host`` names it answers to (``*``: any);
    ``origins``: the origins (``http://host:port``) whose pages may call the API."""

    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={**NO_STORE, **PAGE_POLICY})

    async def all_runs(request: Request) -> Response:
        rows = await anyio.to_thread.run_sync(lambda: [summary(n, runs.get(n)) for n in runs.names()])
        return _json(rows)

    async def one_run(request: Request) -> Response:
        run_dir = _run(runs, request)
        return _json(await anyio.to_thread.run_sync(details, run_dir))

    async def stream(request: Request) -> Response:
        run_dir = _run(runs, request)
        return StreamingResponse(_watch(run_dir), media_type="text/event-stream", headers=NO_STORE)

    async def orders(request: Request) -> Response:
        run_dir = _run(runs, request)
        body = await request.body()
        if len(body) > ORDER_BODY_LIMIT:
            raise Refused(413, "the order is too large")
        try:
            change = _change(orjson.loads(body))
        except orjson.JSONDecodeError as err:
            raise Refused(400, f"the order is not JSON: {err}") from None
        try:  # one at a time, on a thread of their own: one waiting on the control lock holds up no page
            sha, reads = await anyio.to_thread.run_sync(_send, run_dir, change, limiter=orders_limiter)
        except RunnerError as err:
            raise Refused(409, str(err)) from None
        return _json({"sha256": sha, "reads_before": reads})

    orders_limiter = anyio.CapacityLimiter(1)

    async def refused(request: Request, err: Exception) -> Response:
        assert isinstance(err, Refused)
        return _json({"error": str(err)}, status_code=err.status)

    routes = [
        Route("/", page),
        Route("/runs/{name}", page),
        Route("/api/runs", all_runs),
        Route("/api/runs/{name}", one_run),
        Route("/api/runs/{name}/stream", stream),
        Route("/api/runs/{name}/orders", orders, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(TokenGuard, token=token, origins=origins),
    ]
    return Starlette(routes=routes, middleware=middleware, exception_handlers={Refused: refused})


NO_STORE = {"Cache-Control": "no-store"}
PAGE_POLICY = {  # the page loads nothing from elsewhere, and no other page may frame it
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status_code, media_type="application/json", headers=NO_STORE)


def _run(runs: ServedRuns, request: Request) -> Path:
    run_dir = runs.get(request.path_params["name"])
    if run_dir is None:
        raise Refused(404, f"no run called {request.path_params['name']!r} is served here")
    return run_dir


def _change(order: Any) -> Change:
    """The ``Change`` an order asks for; a Refused (400) naming what is wrong with it."""
    if not isinstance(order, dict) or set(order) - {"trial", "settings", "action"}:
        raise Refused(400, 'an order is {"trial": ..., "settings": {...}, "action": {...}}')
    trial, settings, action = order.get("trial"), order.get("settings") or {}, order.get("action")
    try:
        trial = None if trial is None else trial_id(str(trial), "trial")
    except ControlError as err:
        raise Refused(400, str(err)) from None
    if not isinstance(settings, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in settings.values()
    ):
        raise Refused(400, "settings must map each setting's name to a number")
    actions = []
    if action is not None:
        if not isinstance(action, dict) or action.get("do") not in ACTIONS or set(action) - {"do", "to"}:
            raise Refused(400, f'action must be {{"do": one of {", ".join(ACTIONS)}}} (a rollback with "to")')
        actions.append(action)
    if not settings and not actions:
        raise Refused(400, "nothing to change: give settings or an action")
    return Change({name: float(value) for name, value in settings.items()}, actions, trial)


def _send(run_dir: Path, change: Change) -> tuple[str, int]:
    """Checked by the run's schema and written to its control file, as ``runner nudge`` does."""
    schema = control_schema(run_dir)
    check_change(schema, change)
    return write_change(run_dir, change, schema)


async def _watch(run_dir: Path):
    """The event stream of one run: its log from the start, then each line as it is written,
    and the run's files whenever they change; a comment every 15 s keeps the connection open.
    Every look at the files is made on a worker thread, never on the server's event loop."""
    tail, last, quiet = LogTail(run_dir / EVENTS_FILE), None, 0.0

    def look() -> tuple[list[bytes], bool, bytes]:
        events = [event for line in tail.new_lines() if (event := _event(line)) is not None]
        return events, tail.reset, orjson.dumps(details(run_dir))

    while True:
        events, reset, run = await anyio.to_thread.run_sync(look)
        if reset:
            yield b"event: reset\ndata: {}\n\n"
        for start in range(0, len(events), LOG_BATCH):
            yield b"event: log\ndata: [" + b",".join(events[start : start + LOG_BATCH]) + b"]\n\n"
        changed, last = run != last, run
        if changed:
            yield b"event: run\ndata: " + run + b"\n\n"
        quiet = 0.0 if events or changed else quiet + POLL
        if quiet >= 15:
            quiet = 0.0
            yield b": still here\n\n"
        await anyio.sleep(POLL)


def _event(line: bytes) -> bytes | None:
    """An event-log line as one line of JSON (written anew: no carriage return or other
    character a browser splits an event stream's lines on), or None if it is no event."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(event) if isinstance(event, dict) else None


class TokenGuard:
    """ASGI middleware: every ``/api`` request shows the token and comes from this server's
    own page; anything else is answered 403 before it reaches the routes."""

    def __init__(self, app: ASGIApp, token: str, origins: list[str]):
        """``origins``: the pages that may call the API; empty: the origin the request's
        ``Host`` names (a server listening on every address, whose names are not known)."""
        self.app, self.token, self.origins = app, token.encode(), origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api"):
            problem = self.problem(Request(scope))
            if problem is not None:
                await _json({"error": problem}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, request: Request) -> str | None:
        origin = request.headers.get("origin")
        own = self.origins or [f"http://{request.headers.get('host')}"]  # (listening on every address)
        if origin is not None and origin not in own:
            return f"requests from {origin} are refused: only this dashboard's own page may call it"
        if request.headers.get("sec-fetch-site") == "cross-site":
            return "requests from another site are refused"
        given = request.headers.get("x-runner-token")
        if given is None and request.method == "GET":
            given = request.query_params.get("token")
        if given is None or not hmac.compare_digest(given.encode(), self.token):
            return "the dashboard's token is missing or wrong: open the address runner dashboard printed"
        if request.method != "GET" and request.headers.get("content-type", "").split(";")[0] != "application/json":
            return "an order must be sent as application/json"
        return None
