package io.sensorloop.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/**
 * Splits the routed records a Python operator packed into one string, joined by {@code \u001e}, back into
 * one routed record each ({@link RoutedRecordSerializer}'s "topic \u001f key \u001f value"). It runs in the
 * sink's task, so the Python operator's thread hands over one record per call instead of one per output. A
 * string without the separator is one record as it came. Neither separator can occur inside a record: keys
 * are ids without control characters and values are JSON, which escapes them.
 */
public class RoutedSplitter implements FlatMapFunction<String, String> {
    private static final long serialVersionUID = 1L;
    public static final char RECORD_SEP = '\u001e';

    @Override
    public void flatMap(String packed, Collector<String> out) {
        int start = 0;
        int end;
        while ((end = packed.indexOf(RECORD_SEP, start)) >= 0) {
            out.collect(packed.substring(start, end));
            start = end + 1;
        }
        out.collect(start == 0 ? packed : packed.substring(start));
    }
}
