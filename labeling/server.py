"""Run the labeling app: queue + Kafka bridge + Starlette app under uvicorn."""

from __future__ import annotations

import os
import threading
import time

import uvicorn

from labeling.app import create_app
from labeling.bridge import LabelingBridge
from labeling.credentials import Credentials
from operators.review_queue import ReviewQueue
from schemas import Topics

TOKEN_ENV = "SENSORLOOP_LABEL_TOKEN"


def shared_token(explicit: str | None) -> str:
    """The shared token, if one is given (``--token``, else ``$SENSORLOOP_LABEL_TOKEN``); "" when none."""
    return explicit or os.environ.get(TOKEN_ENV, "")


class LabelingServer:
    """The whole labeling service; ``start`` runs it in background threads, ``run`` in the foreground."""

    def __init__(self, bootstrap: str, topics: Topics, credentials: Credentials, classes: list[str],
                 host: str = "127.0.0.1", port: int = 8080, lease_s: float = 120.0, answers_needed: int = 1,
                 group_id: str = "sensorloop-labeling", pipeline_metrics=None, max_queue: int = 10_000,
                 user_header: str = "", trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1"),
                 model_classes: dict[str, list[str]] | None = None, creators: frozenset[str] = frozenset(),
                 max_classes: int = 64) -> None:
        self.queue = ReviewQueue(classes, lease_s, answers_needed, capacity=max_queue, model_classes=model_classes,
                                 creators=creators, max_classes=max_classes)
        self.bridge = LabelingBridge(bootstrap, self.queue, topics, group_id=group_id)
        self.app = create_app(self.queue, self.bridge.publish, credentials, lock=self.bridge.lock,
                              pipeline_metrics=pipeline_metrics, user_header=user_header,
                              trusted_proxies=trusted_proxies)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port, log_level="warning"))
        self.host, self.port = host, port
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> "LabelingServer":
        self.bridge.start()
        self.thread = threading.Thread(target=self.server.run, name="labeling-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"labeling server did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread:
            self.thread.join(timeout=10)
        self.bridge.stop()

    def run(self) -> None:
        self.bridge.start()
        try:
            self.server.run()
        finally:
            self.bridge.stop()
