"""Flink's Kafka connector jars (verified by checksum) and sensorloop's small Java helpers.

The official ``flink-connector-kafka`` 4.0.1-2.0 and ``kafka-clients`` 3.9.1 jars are taken
from the PyPI wheel ``shigawire-apache-flink-libraries`` (only those two files are
extracted; the wheel is never installed) or from a folder the user names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CONNECTOR_WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
CONNECTOR_JARS = {
    "flink-connector-kafka.jar": "842885a51c768b2f31c946a2071656c166ee8cc6d3c02fe6c557e134e03bf228",
    "kafka-clients.jar": "7568b998572d256f0b7bc0afdc1b7a2588b8b08415c62ce314c864a6851ae9d9",
}
HELPER_JAR = "sensorloop-flink.jar"
JAVA_SOURCES = Path(__file__).parent / "java"


class JarError(RuntimeError):
    pass


def jars_dir(configured: str = "") -> Path:
    """Where the jars are kept: ``configured`` (``flink.jars_dir``), else the user's cache
    (``$XDG_CACHE_HOME/sensorloop/jars``, ``~/.cache/sensorloop/jars``); never inside the installed package.

    >>> str(jars_dir("/opt/jars"))
    '/opt/jars'
    """
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "sensorloop" / "jars"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_connector_jars(folder: Path) -> list[str]:
    """Problems with the connector jars in ``folder`` (empty list when all is well)."""
    problems = []
    for name, expected in CONNECTOR_JARS.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif _sha256(path) != expected:
            problems.append(f"{path} has sha256 {_sha256(path)}, expected {expected}")
    return problems


def _extract_from_wheel(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in CONNECTOR_JARS:
            with zf.open(f"pyflink/lib/{name}") as src, open(dest / name, "wb") as out:
                shutil.copyfileobj(src, out)


def ensure_connector_jars(folder: str = "", source: str | None = None) -> Path:
    """Make the verified connector jars available in ``jars_dir(folder)``: copied from ``source`` when
    given, else extracted from the wheel (downloaded only when needed)."""
    dest = jars_dir(folder)
    dest.mkdir(parents=True, exist_ok=True)
    if not verify_connector_jars(dest):
        return dest
    if source:
        src = Path(source)
        for name in CONNECTOR_JARS:
            shutil.copyfile(src / name, dest / name)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                            CONNECTOR_WHEEL], check=True)
            wheel = next(Path(tmp).glob("*.whl"))
            _extract_from_wheel(wheel, dest)
    problems = verify_connector_jars(dest)
    if problems:
        raise JarError("connector jars failed verification: " + "; ".join(problems))
    return dest


def _pyflink_lib() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent / "lib"


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(JAVA_SOURCES.rglob("*.java")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_helper_jar(folder: str = "") -> Path:
    """Compile the Java helpers (envelope deserializer, message grouper, routed serializer) when their source changed."""
    dest = jars_dir(folder)
    jar = dest / HELPER_JAR
    stamp = dest / (HELPER_JAR + ".sha256")
    digest = _sources_digest()
    if jar.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return jar
    javac, jar_tool = shutil.which("javac"), shutil.which("jar")
    if not javac or not jar_tool:
        raise JarError("javac and jar (a JDK 11+) are needed to build sensorloop's Flink helpers")
    lib = _pyflink_lib()
    classpath = os.pathsep.join([str(p) for p in lib.glob("flink-dist-*.jar")]
                                + [str(dest / name) for name in CONNECTOR_JARS])
    with tempfile.TemporaryDirectory() as tmp:
        sources = [str(p) for p in JAVA_SOURCES.rglob("*.java")]
        subprocess.run([javac, "--release", "11", "-nowarn", "-cp", classpath, "-d", tmp, *sources], check=True)
        tmp_jar = dest / (HELPER_JAR + ".tmp")
        subprocess.run([jar_tool, "cf", str(tmp_jar), "-C", tmp, "."], check=True)
        os.replace(tmp_jar, jar)
    stamp.write_text(digest)
    return jar


def ensure_all(folder: str = "", source: str | None = None) -> list[Path]:
    """Connector jars plus helper jar in ``jars_dir(folder)``, ready for ``pipeline.jars``."""
    dest = ensure_connector_jars(folder, source)
    return [dest / name for name in CONNECTOR_JARS] + [ensure_helper_jar(folder)]


def pipeline_jar_urls(folder: str = "") -> str:
    return ";".join(p.resolve().as_uri() for p in ensure_all(folder))
