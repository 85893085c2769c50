"""Baseline for benchmarks: the same KafkaSource and KafkaSink with no Python operator between.

Copies ``sensor-readings`` to a target topic so a benchmark can compare the serving job's
throughput and latency against what Flink and Kafka alone cost on the same machine.
"""

from __future__ import annotations

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer, KafkaSink, KafkaSource
from pyflink.java_gateway import get_gateway

from stream_jobs.flink_env import job_parser, make_env, parse_job_args
from stream_jobs.kafka_io import batched


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("passthrough")
    parser.add_argument("--target", default="passthrough", help="topic the readings are copied to")
    cfg, run = parse_job_args("passthrough", argv, parser)
    target = parser.parse_args(argv).target
    env = make_env(cfg, "passthrough", run)
    bootstrap = cfg.broker.bootstrap
    source = (KafkaSource.builder().set_bootstrap_servers(bootstrap)
              .set_topics(cfg.topics.readings).set_group_id(run.group_id or "sensorloop-passthrough")
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_property("fetch.max.wait.ms", str(cfg.broker.fetch_wait_ms))  # as the serving job's readings
              .set_value_only_deserializer(SimpleStringSchema()).build())
    builder = KafkaSink.builder().set_bootstrap_servers(bootstrap)
    # stamped when produced, as the serving job's outputs are (not with the copied record's timestamp); with a
    # 2 MB producer buffer (32 MB by default: thousands of sample blocks) a stamp is never far ahead of the broker
    builder._j_builder.setRecordSerializer(get_gateway().jvm.io.sensorloop.flink.ProducedAtSerializer(target))
    sink = (batched(builder.set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE))
            .set_property("buffer.memory", str(2 * 1024 * 1024)).build())
    (env.from_source(source, WatermarkStrategy.no_watermarks(), "sensor-readings", type_info=Types.STRING())
     .sink_to(sink).name("kafka-out"))
    env.execute("sensorloop-passthrough")


if __name__ == "__main__":
    main()
