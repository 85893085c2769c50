"""Baseline for benchmarks: the same KafkaSource and KafkaSink with no Python operator between.

Copies ``sensor-readings`` to a target topic so a benchmark can compare the serving job's
throughput and latency against what Flink and Kafka alone cost on the same machine.
"""

from __future__ import annotations

import argparse

from pyflink.common import Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)

from schemas import Topics
from stream_jobs.flink_env import FlinkSettings, make_env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--target", default="passthrough")
    parser.add_argument("--group-id", default="sensorloop-passthrough")
    parser.add_argument("--checkpoint-dir", default="var/checkpoints-passthrough")
    args = parser.parse_args(argv)
    env = make_env(FlinkSettings(checkpoint_dir=args.checkpoint_dir))
    source = (KafkaSource.builder().set_bootstrap_servers(args.bootstrap)
              .set_topics(Topics.from_env().readings).set_group_id(args.group_id)
              .set_starting_offsets(KafkaOffsetsInitializer.earliest())
              .set_property("fetch.max.wait.ms", "10")
              .set_value_only_deserializer(SimpleStringSchema()).build())
    sink = (KafkaSink.builder().set_bootstrap_servers(args.bootstrap)
            .set_record_serializer(KafkaRecordSerializationSchema.builder().set_topic(args.target)
                                   .set_value_serialization_schema(SimpleStringSchema()).build())
            .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
            .set_property("linger.ms", "2").build())
    (env.from_source(source, WatermarkStrategy.no_watermarks(), "sensor-readings", type_info=Types.STRING())
     .sink_to(sink).name("kafka-out"))
    env.execute("sensorloop-passthrough")


if __name__ == "__main__":
    main()
