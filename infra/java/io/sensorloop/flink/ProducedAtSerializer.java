package io.sensorloop.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes each string as the value of a record on one topic, without a key and without the
 * element's timestamp, so the producer stamps the record when the sink hands it over (as the
 * serving job's routed records are): a benchmark times both jobs by their outputs' timestamps.
 * Flink's own serializer would keep the timestamp of the source record it copies.
 */
public class ProducedAtSerializer implements KafkaRecordSerializationSchema<String> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    public ProducedAtSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(String element, KafkaSinkContext context, Long timestamp) {
        return new ProducerRecord<>(topic, null, null, null, element.getBytes(StandardCharsets.UTF_8));
    }
}
