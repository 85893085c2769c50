package io.sensorloop.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/**
 * Hands each Kafka record to Python as raw bytes behind a one-line header
 * "partition offset timestamp\n", so bad payloads can be dead-lettered with their
 * exact position and bytes, and latency can be measured from the record timestamp.
 */
public class EnvelopeDeserializer implements KafkaRecordDeserializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<byte[]> out) {
        byte[] head = (record.partition() + " " + record.offset() + " " + record.timestamp() + "\n")
                .getBytes(StandardCharsets.US_ASCII);
        byte[] value = record.value() == null ? new byte[0] : record.value();
        byte[] joined = new byte[head.length + value.length];
        System.arraycopy(head, 0, joined, 0, head.length);
        System.arraycopy(value, 0, joined, head.length, value.length);
        out.collect(joined);
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
}
