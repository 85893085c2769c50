"""The labeling web app (Starlette): one review request at a time, answers to ``labels``.

Every route but the static scripts needs a labeler's token, as ``Authorization: Bearer``, the
``sl_token`` cookie, or once as ``/?token=…`` (which sets the cookie). The token says who the labeler
is (``labeling.credentials``); a name in a query or body that differs is refused. Repeated wrong
tokens from one client are slowed down (HTTP 429), bodies are size-limited, and every response
carries a content security policy and framing, sniffing and referrer headers.

Behind a single-sign-on reverse proxy, ``user_header`` (e.g. ``X-Forwarded-User``) names the labeler
instead of a token, but only on requests that come from one of ``trusted_proxies``; the same header
from anywhere else is refused as a forgery.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labeling.credentials import Credentials
from operators.review_queue import ReviewError, ReviewQueue
from schemas import Label

STATIC = Path(__file__).parent / "static"
COOKIE = "sl_token"
PROXY_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")  # a labeler name a proxy may hand over
REFUSED = "<!doctype html><title>sensorloop labeling</title><h1>Access refused</h1><p>{}</p>"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class FailureLimiter:
    """At most ``per_minute`` wrong tokens per client in any minute; then the client waits.

    >>> f = FailureLimiter(per_minute=2)
    >>> f.failed("c", 0.0); f.failed("c", 1.0); f.blocked("c", 2.0), f.blocked("c", 61.0)
    (True, False)
    """

    def __init__(self, per_minute: int = 10, clients: int = 10_000) -> None:
        self.per_minute, self.clients = per_minute, clients
        self.failures: dict[str, deque] = {}

    def blocked(self, client: str, now: float) -> bool:
        times = self.failures.get(client)
        while times and now - times[0] >= 60.0:
            times.popleft()
        return bool(times) and len(times) >= self.per_minute

    def failed(self, client: str, now: float) -> None:
        if client not in self.failures and len(self.failures) >= self.clients:
            self.failures.pop(next(iter(self.failures)))  # forget the oldest client, memory stays bounded
        self.failures.setdefault(client, deque()).append(now)


def create_app(queue: ReviewQueue, publish: Callable[[Label], None], credentials: Credentials, lock=None,
               clock: Callable[[], float] = time.time,
               pipeline_metrics: Callable[[], dict] | None = None, max_body_bytes: int = 16 * 1024,
               failures_per_minute: int = 10, user_header: str = "",
               trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")) -> Starlette:
    """Build the app over a queue; ``publish`` writes an answer to Kafka (the bridge's);
    ``pipeline_metrics`` (optional) gives the Flink jobs' metrics for the status view;
    ``user_header`` (optional) is the trusted reverse proxy's user header."""
    import contextlib

    lock = lock or contextlib.nullcontext()
    limiter = FailureLimiter(failures_per_minute)

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "?"

    def identify(request: Request, given: str | None = None) -> tuple[str | None, Response | None]:
        """(labeler, None) for a valid token; (None, refusal) otherwise, counting the failure."""
        client, now = client_of(request), clock()
        if limiter.blocked(client, now):
            return None, JSONResponse({"error": "too many wrong tokens; wait a minute"}, status_code=429)
        proxied = request.headers.get(user_header) if user_header else None
        if proxied is not None and given is None:
            if client not in trusted_proxies:
                limiter.failed(client, now)
                return None, JSONResponse({"error": f"{user_header} is accepted only from the trusted proxy"},
                                          status_code=401)
            if not PROXY_USER.fullmatch(proxied):
                return None, JSONResponse({"error": f"{user_header} is not a valid labeler name"}, status_code=401)
            return proxied, None
        if given is None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(COOKIE, "")
        labeler = credentials.labeler_of(given)
        if labeler is None:
            limiter.failed(client, now)
            return None, JSONResponse({"error": "missing or wrong access token"}, status_code=401)
        return labeler, None

    def claimed(value, labeler: str) -> None:
        if value not in (None, "", labeler):
            raise ReviewError(f"labeler {value!r} is not who your token says ({labeler!r})", 403)

    def html_refusal(refusal: Response, hint: str) -> Response:
        status = refusal.status_code
        reason = "Too many wrong tokens: wait a minute." if status == 429 else hint
        return HTMLResponse(REFUSED.format(reason), status_code=status)

    async def page(request: Request) -> Response:
        query_token = request.query_params.get("token")
        if query_token is not None:
            labeler, refusal = identify(request, query_token)
            if refusal is not None:
                return html_refusal(refusal, "The access token is wrong.")
            secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, query_token, httponly=True, samesite="strict", secure=secure)
            return response
        labeler, refusal = identify(request)
        if refusal is not None:
            return html_refusal(refusal, "Open this page with <code>/?token=YOUR_TOKEN</code>.")
        return FileResponse(STATIC / "index.html")

    async def status_page(request: Request) -> Response:
        _, refusal = identify(request)
        if refusal is not None:
            return html_refusal(refusal, "The access token is missing or wrong.")
        return FileResponse(STATIC / "status.html")

    async def whoami(request: Request) -> Response:
        labeler, refusal = identify(request)
        return refusal or JSONResponse({"labeler": labeler})

    async def next_request(request: Request) -> Response:
        labeler, refusal = identify(request)
        if refusal is not None:
            return refusal
        try:
            claimed(request.query_params.get("labeler"), labeler)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        now = clock()
        with lock:
            req = queue.lease(labeler, now)
            waiting = queue.waiting()
            classes = queue.classes_for(req) if req else list(queue.classes)
            expiry = queue.lease_expiry(req.review_id, labeler) if req else None
        may_name = queue.may_name_classes(labeler)
        if req is None:
            return JSONResponse({"request": None, "waiting": waiting, "classes": classes, "labeler": labeler,
                                 "may_name_classes": may_name})
        return JSONResponse({"request": req.to_dict(), "waiting": waiting, "classes": classes, "labeler": labeler,
                             "lease_expires_in_s": round(expiry - now, 1), "may_name_classes": may_name})

    async def answer(request: Request) -> Response:
        labeler, refusal = identify(request)
        if refusal is not None:
            return refusal
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"error": f"the body is larger than {max_body_bytes} bytes"}, status_code=413)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                return JSONResponse({"error": f"the body is larger than {max_body_bytes} bytes"}, status_code=413)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            claimed(body.get("labeler"), labeler)
            review_id, label = body.get("review_id"), body.get("label", "")
            status, new_class = body.get("status", "answered"), body.get("new_class", False)
            verdict = body.get("verdict")
            if not isinstance(review_id, str) or not isinstance(label, str) or not isinstance(status, str):
                raise ReviewError("review_id, label and status must be strings")
            if not isinstance(new_class, bool):
                raise ReviewError("new_class must be true or false")
            if verdict is not None and not isinstance(verdict, str):
                raise ReviewError("verdict must be a string")
            with lock:
                record = queue.answer(review_id, labeler, label, clock(), status, new_class, verdict)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            publish(record)
        except Exception as exc:  # the broker did not take it: the labeler may retry, the lease stays
            return JSONResponse({"error": f"could not store the answer: {exc}"}, status_code=503)
        return JSONResponse({"ok": True, "label": record.to_dict()})

    async def status(request: Request) -> Response:
        _, refusal = identify(request)
        if refusal is not None:
            return refusal
        with lock:
            body = queue.status()
        if pipeline_metrics is not None:
            try:
                body["pipeline"] = pipeline_metrics()
            except Exception as exc:  # the page still works when the metrics endpoint does not
                body["pipeline_error"] = str(exc)
        return JSONResponse(body)

    def static_script(name: str):
        async def script(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/javascript")
        return script

    return Starlette(routes=[
        Route("/", page), Route("/status", status_page), Route("/app.js", static_script("app.js")),
        Route("/status.js", static_script("status.js")), Route("/api/whoami", whoami),
        Route("/api/next", next_request), Route("/api/answer", answer, methods=["POST"]),
        Route("/api/status", status),
    ], middleware=[Middleware(SecurityHeaders)])
