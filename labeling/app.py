"""The labeling web app (Starlette): one review request at a time, answers to ``labels``.

Every route but the static script needs the access token, as ``Authorization: Bearer``,
the ``sl_token`` cookie, or once as ``/?token=…`` (which sets the cookie).
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from operators.review_queue import ReviewError, ReviewQueue
from schemas import Label, SchemaError
from schemas.base import require_id

STATIC = Path(__file__).parent / "static"
COOKIE = "sl_token"
REFUSED = "<!doctype html><title>sensorloop labeling</title><h1>Access refused</h1><p>{}</p>"


def create_app(queue: ReviewQueue, publish: Callable[[Label], None], token: str, lock=None,
               clock: Callable[[], float] = time.time,
               pipeline_metrics: Callable[[], dict] | None = None) -> Starlette:
    """Build the app over a queue; ``publish`` writes an answer to Kafka (the bridge's);
    ``pipeline_metrics`` (optional) gives the Flink jobs' metrics for the status view."""
    if not token:
        raise ValueError("an access token is required (config or SENSORLOOP_LABEL_TOKEN)")
    import contextlib

    lock = lock or contextlib.nullcontext()

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def refuse_api() -> JSONResponse:
        return JSONResponse({"error": "missing or wrong access token"}, status_code=401)

    def labeler_of(value: str | None) -> str:
        try:
            return require_id({"labeler": value}, "labeler", max_len=64)
        except SchemaError as exc:
            raise ReviewError(f"labeler: {exc.reason}") from None

    async def page(request: Request) -> Response:
        query_token = request.query_params.get("token")
        if query_token is not None:
            if not hmac.compare_digest(query_token.encode(), token.encode()):
                return HTMLResponse(REFUSED.format("The access token is wrong."), status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        if not authorised(request):
            return HTMLResponse(REFUSED.format("Open this page with <code>/?token=YOUR_TOKEN</code>."),
                                status_code=401)
        return FileResponse(STATIC / "index.html")

    async def status_page(request: Request) -> Response:
        if not authorised(request):
            return HTMLResponse(REFUSED.format("The access token is missing or wrong."), status_code=401)
        return FileResponse(STATIC / "status.html")

    async def next_request(request: Request) -> Response:
        if not authorised(request):
            return refuse_api()
        try:
            labeler = labeler_of(request.query_params.get("labeler"))
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        now = clock()
        with lock:
            req = queue.lease(labeler, now)
            waiting = queue.waiting()
            classes = list(queue.classes)
            expiry = queue.lease_expiry(req.review_id, labeler) if req else None
        if req is None:
            return JSONResponse({"request": None, "waiting": waiting, "classes": classes})
        return JSONResponse({"request": req.to_dict(), "waiting": waiting, "classes": classes,
                             "lease_expires_in_s": round(expiry - now, 1)})

    async def answer(request: Request) -> Response:
        if not authorised(request):
            return refuse_api()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            labeler = labeler_of(body.get("labeler"))
            review_id, label = body.get("review_id"), body.get("label", "")
            status = body.get("status", "answered")
            if not isinstance(review_id, str) or not isinstance(label, str) or not isinstance(status, str):
                raise ReviewError("review_id, label and status must be strings")
            with lock:
                record = queue.answer(review_id, labeler, label, clock(), status)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        try:
            publish(record)
        except Exception as exc:  # the broker did not take it: the labeler may retry, the lease stays
            return JSONResponse({"error": f"could not store the answer: {exc}"}, status_code=503)
        return JSONResponse({"ok": True, "label": record.to_dict()})

    async def status(request: Request) -> Response:
        if not authorised(request):
            return refuse_api()
        with lock:
            body = queue.status()
        if pipeline_metrics is not None:
            try:
                body["pipeline"] = pipeline_metrics()
            except Exception as exc:  # the page still works when the metrics endpoint does not
                body["pipeline_error"] = str(exc)
        return JSONResponse(body)

    async def script(request: Request) -> Response:
        return FileResponse(STATIC / "app.js", media_type="text/javascript")

    return Starlette(routes=[
        Route("/", page), Route("/status", status_page), Route("/app.js", script),
        Route("/api/next", next_request), Route("/api/answer", answer, methods=["POST"]),
        Route("/api/status", status),
    ])
