package io.sensorloop.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes "topic \u001f key \u001f value" strings produced by the Python operators as Kafka
 * records with that topic and key, so one KafkaSink serves every output topic and records
 * keep their partitioning key (device id, review id, model name).
 */
public class RoutedRecordSerializer implements KafkaRecordSerializationSchema<String> {
    private static final long serialVersionUID = 1L;
    private static final char SEP = '\u001f';

    @Override
    public ProducerRecord<byte[], byte[]> serialize(String element, KafkaSinkContext context, Long timestamp) {
        int first = element.indexOf(SEP);
        int second = first < 0 ? -1 : element.indexOf(SEP, first + 1);
        if (first <= 0 || second < 0) {
            throw new IllegalArgumentException("routed record lacks topic/key separators");
        }
        String topic = element.substring(0, first);
        byte[] key = second == first + 1 ? null : element.substring(first + 1, second).getBytes(StandardCharsets.UTF_8);
        byte[] value = element.substring(second + 1).getBytes(StandardCharsets.UTF_8);
        return new ProducerRecord<>(topic, null, null, key, value);
    }
}
