"""The jobs' stateful operators carry fixed uids, so a savepoint maps onto a later version of the
job graph (savepoint upgrades) as long as those operators keep their uids."""

import pytest

from settings import Config
from stream_jobs.flink_env import make_env
from stream_jobs.learning_job import build_learning_job
from stream_jobs.serving_job import build_serving_job

pytestmark = pytest.mark.e2e  # needs the JVM and the connector jars, not a broker


def uids(env) -> dict[str, str | None]:
    graph = env._generate_stream_graph(clear_transformations=False)
    return {node.getOperatorName(): node.getTransformationUID() for node in graph.getStreamNodes().toArray()}


def config(tmp_path, registry) -> Config:
    return Config().with_values({"broker.bootstrap": "localhost:9", "registry.path": str(registry),
                                 "flink.state_dir": str(tmp_path / "flink"), "flink.log_dir": str(tmp_path / "logs")})


def test_stateful_operators_of_both_jobs_have_fixed_uids(tmp_path, registry_copy):
    cfg = config(tmp_path, registry_copy)
    serving_env = make_env(cfg, "serving")
    build_serving_job(serving_env, cfg)
    serving = uids(serving_env)
    for name in ("serve-shards", "model-announcements"):  # the sharded layout, the default
        assert serving[name] == name, serving
    assert serving["Source: sensor-readings"] == "sensor-readings"
    assert serving["sensor-readings-shard-groups"] == "sensor-readings-shard-groups"  # ReadingGrouper by shard
    assert "parse-and-window" not in serving and "inference" not in serving
    assert serving["Source: model-snapshots-and-drift-events"] == "model-snapshots-and-drift-events"
    assert serving["kafka-out: Writer"] == "kafka-out"
    assert serving["kafka-out-unpack"] == "kafka-out-unpack"  # RoutedSplitter

    learning_env = make_env(cfg, "learning")
    build_learning_job(learning_env, cfg)
    learning = uids(learning_env)
    for name in ("join-answers", "learn-and-publish"):
        assert learning[name] == name, learning
    assert learning["Source: reviews-and-labels"] == "reviews-and-labels"
    assert learning["kafka-out: Writer"] == "kafka-out"
    assert learning["kafka-out-unpack"] == "kafka-out-unpack"


def _field(obj, name: str):
    """A private field of a Java object (or of one of its superclasses)."""
    cls = obj.getClass()
    while cls is not None:
        try:
            found = cls.getDeclaredField(name)
        except Exception:  # py4j wraps NoSuchFieldException
            cls = cls.getSuperclass()
            continue
        found.setAccessible(True)
        return found.get(obj)
    raise KeyError(name)


def factories(env, kind: str) -> dict:
    """The operator factories of class ``kind`` in the job graph, by operator name."""
    graph = env._generate_stream_graph(clear_transformations=False)
    nodes = [(node.getOperatorName(), node.getOperatorFactory()) for node in graph.getStreamNodes().toArray()]
    return {name: factory for name, factory in nodes
            if factory is not None and factory.getClass().getSimpleName() == kind}


def source_fetch_waits(env) -> dict[str, str]:
    """``fetch.max.wait.ms`` of each KafkaSource in the job graph, by source name."""
    return {name: _field(_field(factory, "source"), "props").getProperty("fetch.max.wait.ms")
            for name, factory in factories(env, "SourceOperatorFactory").items()}


def sink_producer_settings(env, *names: str) -> dict[str, tuple]:
    """Producer settings of each KafkaSink's writer in the job graph, by operator name."""
    return {name: tuple(_field(_field(factory, "sink"), "kafkaProducerConfig").getProperty(n) for n in names)
            for name, factory in factories(env, "SinkWriterOperatorFactory").items()}


def test_both_jobs_sinks_send_batches_of_up_to_256_kb(tmp_path, registry_copy):
    """Kafka's 16 KB default batch made a produce request of every few dozen predictions, a cost the broker
    felt; a batch still leaves after 2 ms."""
    cfg = config(tmp_path, registry_copy)
    for job, build in (("serving", build_serving_job), ("learning", build_learning_job)):
        env = make_env(cfg, job)
        build(env, cfg)
        assert sink_producer_settings(env, "batch.size", "linger.ms") == {"kafka-out: Writer": ("262144", "2")}


def test_only_the_readings_source_polls_the_broker_every_10_ms(tmp_path, registry_copy):
    """The embedded broker answers a waiting fetch only when its wait ends: by default the readings source
    asks every 10 ms for latency, the sources of rare records every 250 ms (polling costs the job and the
    broker CPU even while nothing comes); both are settings. Thread mode's bundle timer, which ends no bundle there,
    runs once a second."""
    cfg = config(tmp_path, registry_copy)
    serving_env = make_env(cfg, "serving")
    build_serving_job(serving_env, cfg)
    assert source_fetch_waits(serving_env) == {"Source: sensor-readings": "10",
                                                "Source: model-snapshots-and-drift-events": "250"}
    configured = serving_env._j_stream_execution_environment.getConfiguration()
    assert configured.toMap().get("python.fn-execution.bundle.time") == "1000"
    cfg = cfg.with_values({"broker.fetch_wait_ms": 100, "broker.rare_fetch_wait_ms": 1000})
    serving_env, learning_env = make_env(cfg, "serving"), make_env(cfg, "learning")
    build_serving_job(serving_env, cfg)
    build_learning_job(learning_env, cfg)
    assert sorted(source_fetch_waits(serving_env).values()) == ["100", "1000"]
    assert source_fetch_waits(learning_env) == {"Source: reviews-and-labels": "1000"}


def test_the_per_device_layout_keeps_its_operators_and_uids(tmp_path, registry_copy):
    cfg = config(tmp_path, registry_copy).with_values({"serving.layout": "per_device"})
    env = make_env(cfg, "serving")
    build_serving_job(env, cfg)
    serving = uids(env)
    for name in ("parse-and-window", "model-announcements", "inference"):
        assert serving[name] == name, serving
    assert serving["sensor-readings-groups"] == "sensor-readings-groups"  # ReadingGrouper by device, on by default
    assert "serve-shards" not in serving


def test_per_device_grouping_off_leaves_the_source_feeding_python_directly(tmp_path, registry_copy):
    cfg = config(tmp_path, registry_copy).with_values({"serving.group_ms": 0, "serving.layout": "per_device"})
    env = make_env(cfg, "serving")
    build_serving_job(env, cfg)
    assert "sensor-readings-groups" not in uids(env)


def test_java_puts_a_device_on_the_shard_python_computes(tmp_path, registry_copy):
    """ReadingGrouper.shardOf (Java, which groups) and shard_of (Python, which keeps the device's state)
    agree, for ids of any script and length."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pyflink.java_gateway import get_gateway

    from operators.shard_serving import shard_of

    make_env(config(tmp_path, registry_copy), "serving")  # the JVM, with the helper jar
    grouper = get_gateway().jvm.io.sensorloop.flink.ReadingGrouper

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), st.integers(1, 64))
    def agree(device, shards):
        assert grouper.shardOf(device, shards) == shard_of(device, shards)

    agree()


class ReferenceGroupRate:
    """GroupRate (Java) as its documentation states it, to check the Java against."""

    def __init__(self, wait_ms: int, sparse_wait_ms: int, span_ms: int, min_per_group: float) -> None:
        self.wait, self.sparse_wait, self.span, self.bar = wait_ms, min(wait_ms, sparse_wait_ms), span_ms, min_per_group
        self.start, self.records, self.keys, self.sparse = None, 0, set(), False

    def record(self, key, now: int) -> bool:
        if self.start is None:
            self.start = now
        elif now - self.start >= self.span:
            self.sparse = self.records / max(1, len(self.keys)) * self.wait / (now - self.start) < self.bar
            self.start, self.records, self.keys = now, 0, set()
        self.records += 1
        self.keys.add(key)
        return self.sparse

    def wait_ms(self) -> int:
        return self.sparse_wait if self.sparse else self.wait


def test_the_grouper_waits_briefly_while_the_stream_is_too_thin_to_group(tmp_path, registry_copy):
    """GroupRate: 1,000 messages/s over 8 shards (1.25 records per 10 ms group) waits 2 ms once the first
    100 ms span has shown the rate; 10,000/s keeps the full 10 ms; and for any stream of keys and times the
    Java decides as its documented rule does (Hypothesis, against a reference)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pyflink.java_gateway import get_gateway

    make_env(config(tmp_path, registry_copy), "serving")  # the JVM, with the helper jar
    jvm = get_gateway().jvm.io.sensorloop.flink
    grouper = jvm.ReadingGrouper

    def waits(per_second: int, seconds: float = 0.35) -> list[int]:
        rate = jvm.GroupRate(10, grouper.SPARSE_DELAY_MS, grouper.RATE_SPAN_MS, grouper.MIN_PER_GROUP)
        out = []
        for i in range(int(per_second * seconds)):
            rate.record(i % 8, 1_000 * i // per_second)
            out.append(rate.waitMs())
        return out

    thin, busy = waits(1_000), waits(10_000)
    assert thin[:99] == [10] * 99 and set(thin[100:]) == {2}  # the first span counts as dense
    assert set(busy) == {10}

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40)), max_size=120),
           st.integers(0, 20), st.integers(0, 5), st.integers(1, 60), st.floats(0, 4))
    def same_as_reference(stream, wait, sparse_wait, span, bar):
        java, reference, now = jvm.GroupRate(wait, sparse_wait, span, bar), ReferenceGroupRate(wait, sparse_wait, span, bar), 0
        for key, step in stream:
            now += step
            assert java.record(f"k{key}", now) == reference.record(f"k{key}", now)
            assert java.waitMs() == reference.wait_ms()

    same_as_reference()


def test_the_grouper_tells_the_shards_it_sent_to_once_the_readings_pause(tmp_path, registry_copy):
    """QuietWatch (Java): the shards sent to since the last pause are handed over, in the order first sent,
    once no record came for ``quietMs`` after the last one, and not while records keep coming; for any stream
    of records, sends and checks it decides as a reference written from its documentation (Hypothesis)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pyflink.java_gateway import get_gateway

    make_env(config(tmp_path, registry_copy), "serving")  # the JVM, with the helper jar
    jvm = get_gateway().jvm.io.sensorloop.flink
    ms = 1_000_000
    watch = jvm.QuietWatch(1)
    watch.record(0)
    watch.sent(5)
    watch.sent(2)
    watch.sent(5)
    assert list(watch.takeIfQuiet(ms - 1)) == [] and watch.remainingNs(ms - 1) == 1
    watch.record(ms - 1)  # a record came: the pause starts again
    assert list(watch.takeIfQuiet(ms)) == [] and watch.waiting()
    assert list(watch.takeIfQuiet(2 * ms - 1)) == [5, 2] and not watch.waiting()
    assert list(watch.takeIfQuiet(10 * ms)) == []  # told once
    with pytest.raises(Exception, match="quietMs"):
        jvm.QuietWatch(0)
    with pytest.raises(Exception, match="quietMs"):
        jvm.ReadingGrouper(10, 10, 1000, 8, -1)

    event = st.tuples(st.sampled_from(["record", "sent", "check"]), st.integers(0, 7), st.integers(0, 3 * ms))

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.integers(1, 5), st.lists(event, max_size=80))
    def same_as_reference(quiet_ms, events):
        java, now, last, sent = jvm.QuietWatch(quiet_ms), 0, 0, []
        for kind, shard, step in events:
            now += step
            if kind == "record":
                java.record(now)
                last = now
            elif kind == "sent":
                java.sent(shard)
                sent += [shard] if shard not in sent else []
            else:
                quiet = bool(sent) and now - last >= quiet_ms * ms
                assert list(java.takeIfQuiet(now)) == (sent if quiet else [])
                sent = [] if quiet else sent
            assert java.waiting() == bool(sent) and java.remainingNs(now) == max(0, last + quiet_ms * ms - now)

    same_as_reference()


def test_python_unpacks_the_groups_java_packs(tmp_path, registry_copy):
    """What ReadingGrouper packs (by device: ``pack``; by shard: ``packKeyed`` over ``keyed`` records),
    ``unpack_group`` and ``unpack_shard_group`` give back pair for pair, for keys of any script and
    envelopes of any bytes and length."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pyflink.java_gateway import get_gateway

    from stream_jobs.kafka_io import unpack_group, unpack_shard_group

    make_env(config(tmp_path, registry_copy), "serving")  # the JVM, with the helper jar
    jvm = get_gateway().jvm
    grouper = jvm.io.sensorloop.flink.ReadingGrouper
    keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
    envelopes = st.binary(min_size=1, max_size=300).filter(lambda e: e[0] != 0)  # an envelope starts with a topic

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(keys, envelopes), min_size=1, max_size=20))
    def round_trip(pairs):
        keyed, plain = jvm.java.util.ArrayList(), jvm.java.util.ArrayList()
        for key, envelope in pairs:
            keyed.add(grouper.keyed(key, envelope))
            plain.add(envelope)
        assert unpack_shard_group(bytes(grouper.packKeyed(keyed))) == pairs
        assert unpack_group(bytes(grouper.pack(plain))) == [envelope for _, envelope in pairs]

    round_trip()


def test_the_sink_unpacks_what_the_serving_operator_packs(tmp_path, registry_copy):
    """``RoutedSplitter`` turns what ``packed`` joined back into the routed records one by one, for any ids and
    any JSON payloads (whose strings may hold both separators: JSON escapes them), and it runs in the sink's
    task, off the Python operator's thread."""
    import orjson
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pyflink.java_gateway import get_gateway

    from operators.outgoing import Outgoing
    from stream_jobs.kafka_io import packed, routed

    cfg = config(tmp_path, registry_copy)
    env = make_env(cfg, "serving")
    build_serving_job(env, cfg)
    tasks = [vertex.getName() for vertex in env._generate_stream_graph(clear_transformations=False)
             .getJobGraph().getVerticesAsArray()]
    assert any("kafka-out-unpack" in name and "kafka-out: Writer" in name for name in tasks), tasks
    assert not any("kafka-out-unpack" in name and "serve-shards" in name for name in tasks), tasks

    jvm = get_gateway().jvm
    splitter = jvm.io.sensorloop.flink.RoutedSplitter()
    ids = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
    payloads = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=30),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=8)
    outputs = st.builds(Outgoing, st.sampled_from(["predictions", "review-requests", "dead-letters"]),
                        st.none() | ids, payloads.map(orjson.dumps))

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.lists(outputs, max_size=12))
    def round_trip(outgoing):
        got = jvm.java.util.ArrayList()
        for record in packed(outgoing):
            splitter.flatMap(record, jvm.org.apache.flink.api.common.functions.util.ListCollector(got))
        assert list(got) == [routed(out) for out in outgoing]

    round_trip()


def test_the_local_jvm_runs_with_the_configured_options(tmp_path, registry_copy):
    from pyflink.java_gateway import get_gateway

    cfg = config(tmp_path, registry_copy)
    make_env(cfg, "serving")  # starts the JVM unless the test above did
    arguments = list(get_gateway().jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert cfg.flink.local_jvm_options in arguments, arguments
