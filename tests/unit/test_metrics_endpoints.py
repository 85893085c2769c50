"""``sensorloop status`` reads every TaskManager's Prometheus reporter: a ``dns+`` URL names all the replicas
behind one host name (a compose service, a Kubernetes headless service), and their counters are summed."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from control import metrics

LINE = 'flink_taskmanager_job_task_operator_{name}{{job_name="sensorloop_serving",subtask_index="{i}",}} {value}\n'


def reporter(address: str, port: int, text: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_dns_url_reads_every_taskmanager_behind_the_name(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        servers = [reporter(f"127.0.0.{k + 1}", port, LINE.format(name="predictions", i=k, value=3.0 + k)
                            + LINE.format(name="model_version", i=k, value=2.0 + k)) for k in range(2)]
    except OSError as exc:
        pytest.skip(f"this machine cannot listen on a second loopback address (127.0.0.2): {exc}")
    resolved, real = [], socket.getaddrinfo

    def two_replicas(host, port, family=0, kind=0, *rest):  # the connections' own lookups go to the real one
        if host not in ("taskmanager", "nowhere"):
            return real(host, port, family, kind, *rest)
        resolved.append(host)
        if host == "nowhere":
            raise socket.gaierror(f"unknown host {host}")
        return [(family, kind, 6, "", (f"127.0.0.{k}", port)) for k in (2, 1, 2)]  # repeats, out of order

    monkeypatch.setattr(metrics.socket, "getaddrinfo", two_replicas)
    try:
        urls = [f"dns+http://taskmanager:{port}/metrics"]
        assert metrics.expand(urls) == [f"http://127.0.0.{k}:{port}/metrics" for k in (1, 2)]
        samples, answered = metrics.scrape(urls)
        assert len(answered) == 2
        summed = metrics.summarize(samples)["sensorloop-serving"]
        assert summed["predictions"] == 7.0 and summed["model_version"] == 3.0  # counters add up, gauges take the max
        assert metrics.scrape([f"http://127.0.0.1:{port}/metrics"])[0] != samples  # one replica alone is not all
        assert metrics.expand([f"dns+http://nowhere:{port}/metrics"]) == [f"http://nowhere:{port}/metrics"]
        assert resolved == ["taskmanager", "taskmanager", "nowhere"]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
