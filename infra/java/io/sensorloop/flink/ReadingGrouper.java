package io.sensorloop.flink;

import java.io.ByteArrayOutputStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.types.Row;

/**
 * Groups the keyed source's Row(key, envelope) records of one key into one record, so that a device
 * sending one sample per message crosses into Python once per group instead of once per message.
 *
 * <p>When nothing is buffered, a record whose key's previous record came at least {@code maxDelayMs}
 * earlier is sent on at once: while the job keeps up with devices that send slower than that, grouping
 * would gain nothing and they pay no wait for it. A device sending faster is grouped from its second
 * record on, and while a backlog is read something is nearly always buffered, so it is grouped as before.
 *
 * <p>All groups are sent on when one holds {@code maxRecords} records, when the oldest buffered record
 * has waited {@code maxDelayMs}, when more than {@code maxBytes} are buffered, before every checkpoint
 * barrier ({@code prepareSnapshotPreBarrier}: nothing is buffered across a checkpoint, so the operator
 * has no state and exactly-once holds) and at the end of input. Records of one key keep their order,
 * and groups go out in the order of their first records, so the first records of the groups keep
 * their partition's offset order (which the serving job's source watch checks). A group of one record is sent as it came; a larger group is
 * {@code 0x00} followed by each envelope as a 4-byte big-endian length and its bytes (an envelope
 * starts with its topic's name, never with {@code 0x00}).
 */
public class ReadingGrouper extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;
    public static final byte MARK = 0;
    private final int maxRecords;
    private final long maxDelayMs;
    private final long maxBytes;
    private transient Map<String, List<byte[]>> groups;
    private transient Map<String, Long> lastSeen; // per key, when its latest record came (recent keys only)
    private transient long lastSweep;
    private transient long buffered;
    private transient boolean timerSet;

    public ReadingGrouper(int maxRecords, long maxDelayMs, long maxBytes) {
        if (maxRecords < 1 || maxDelayMs < 0 || maxBytes < 1) {
            throw new IllegalArgumentException("ReadingGrouper: maxRecords and maxBytes must be >= 1, maxDelayMs >= 0");
        }
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
        this.maxBytes = maxBytes;
    }

    @Override
    public void open() throws Exception {
        super.open();
        groups = new LinkedHashMap<>();
        lastSeen = new HashMap<>();
        lastSweep = 0;
        buffered = 0;
        timerSet = false;
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row row = element.getValue();
        String key = (String) row.getField(0);
        byte[] envelope = (byte[]) row.getField(1);
        if (maxDelayMs > 0) {
            long now = getProcessingTimeService().getCurrentProcessingTime();
            Long previous = lastSeen.put(key, now);
            forgetQuietKeys(now);
            if (groups.isEmpty() && (previous == null || now - previous >= maxDelayMs)) { // nothing waits
                output.collect(new StreamRecord<>(row));
                return;
            }
        }
        List<byte[]> group = groups.computeIfAbsent(key, k -> new ArrayList<>());
        group.add(envelope);
        buffered += envelope.length;
        if (group.size() >= maxRecords || buffered > maxBytes || maxDelayMs == 0) {
            flushAll();
        } else if (!timerSet) {
            timerSet = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, this);
        }
    }

    @Override
    public void onProcessingTime(long time) throws Exception {
        timerSet = false;
        flushAll();
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flushAll();
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        super.finish();
    }

    /**
     * Drops the keys not seen for {@code maxDelayMs} (they count as not busy either way), at most every
     * 100 ms or every {@code maxDelayMs} if that is longer, so the map holds about the keys of that span
     * however many devices there are.
     */
    private void forgetQuietKeys(long now) {
        if (now - lastSweep < Math.max(100, maxDelayMs)) {
            return;
        }
        lastSweep = now;
        lastSeen.values().removeIf(seen -> now - seen >= maxDelayMs);
    }

    private void flushAll() {
        for (Map.Entry<String, List<byte[]>> entry : groups.entrySet()) {
            output.collect(new StreamRecord<>(Row.of(entry.getKey(), pack(entry.getValue()))));
        }
        groups.clear();
        buffered = 0;
    }

    /** One envelope as it is; several as MARK, then (4-byte big-endian length, bytes) for each. */
    static byte[] pack(List<byte[]> group) {
        if (group.size() == 1) {
            return group.get(0);
        }
        int size = 1;
        for (byte[] envelope : group) {
            size += 4 + envelope.length;
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(size);
        out.write(MARK);
        for (byte[] envelope : group) {
            int n = envelope.length;
            out.write(n >>> 24);
            out.write(n >>> 16);
            out.write(n >>> 8);
            out.write(n);
            out.write(envelope, 0, n);
        }
        return out.toByteArray();
    }
}
