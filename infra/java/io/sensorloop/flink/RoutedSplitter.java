package io.sensorloop.flink;

import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/**
 * Splits a Python operator's output record that holds several routed records (each "topic \u001f key \u001f
 * value", as {@link RoutedRecordSerializer} reads them) joined by the record separator {@code \u001e}, so the
 * operator hands its outputs to Java once per call instead of once per output. JSON values and identifiers never
 * hold a raw control character, so the separator cannot occur inside a record.
 */
public class RoutedSplitter implements FlatMapFunction<String, String> {
    private static final long serialVersionUID = 1L;
    public static final char RECORD_SEP = '\u001e';

    @Override
    public void flatMap(String joined, Collector<String> out) {
        for (String record : split(joined)) {
            out.collect(record);
        }
    }

    /** The routed records {@code joined} holds, in order. */
    public static List<String> split(String joined) {
        List<String> records = new ArrayList<>();
        int start = 0;
        int end;
        while ((end = joined.indexOf(RECORD_SEP, start)) >= 0) {
            records.add(joined.substring(start, end));
            start = end + 1;
        }
        records.add(joined.substring(start));
        return records;
    }
}
