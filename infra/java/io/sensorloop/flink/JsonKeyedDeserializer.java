package io.sensorloop.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

/**
 * Emits Row(key, "topic partition offset timestamp\n" + payload) for each Kafka record, with the key read
 * from the payload's top-level string field {@code field} (for example "device_id"; "" when there is
 * none). The row is keyed in Java, so the Python side needs no separate key-extraction operator per
 * record. Python still validates the whole payload and dead-letters what is wrong.
 */
public class JsonKeyedDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final String field;
    private transient JsonFactory factory;

    public JsonKeyedDeserializer(String field) {
        this.field = field;
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        byte[] head = (record.topic() + " " + record.partition() + " " + record.offset() + " " + record.timestamp() + "\n")
                .getBytes(StandardCharsets.US_ASCII);
        byte[] value = record.value() == null ? new byte[0] : record.value();
        byte[] joined = new byte[head.length + value.length];
        System.arraycopy(head, 0, joined, 0, head.length);
        System.arraycopy(value, 0, joined, head.length, value.length);
        out.collect(Row.of(key(value), joined));
    }

    String key(byte[] value) {
        if (factory == null) {
            factory = new JsonFactory();
        }
        try (JsonParser parser = factory.createParser(value)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                return "";
            }
            while (parser.nextToken() == JsonToken.FIELD_NAME) {
                String name = parser.currentName();
                JsonToken token = parser.nextToken();
                if (field.equals(name)) {
                    return token == JsonToken.VALUE_STRING ? usable(parser.getText()) : "";
                }
                parser.skipChildren();
            }
        } catch (Exception e) {
            // malformed JSON: the Python parser dead-letters it with the reason
        }
        return "";
    }

    /**
     * The key as it is, or "" when Python could not take it: a lone UTF-16 surrogate (for example from
     * "\ud800" in the JSON) cannot be encoded for the Python side and would fail the task before any of
     * our code runs. The record still goes on, and the Python parser dead-letters it with the reason.
     */
    static String usable(String key) {
        for (int i = 0; i < key.length(); i++) {
            char c = key.charAt(i);
            if (Character.isHighSurrogate(c) && i + 1 < key.length() && Character.isLowSurrogate(key.charAt(i + 1))) {
                i++;
            } else if (Character.isSurrogate(c)) {
                return "";
            }
        }
        return key;
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW(Types.STRING, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }
}
