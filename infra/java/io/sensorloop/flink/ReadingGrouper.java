package io.sensorloop.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32;
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
 * While the whole stream is too thin for groups of {@code maxDelayMs} to form ({@link GroupRate}: fewer than
 * {@link #MIN_PER_GROUP} records per key within it, measured over spans of {@link #RATE_SPAN_MS}), buffered
 * records wait at most {@link #SPARSE_DELAY_MS} instead: enough to group a burst (a fetch's worth at a
 * time, or what a backpressured source sends at once), too short to add much latency at low rates.
 *
 * <p>All groups are sent on when one holds {@code maxRecords} records, when the oldest buffered record
 * has waited {@code maxDelayMs} (or the sparse wait), when more than {@code maxBytes} are buffered, before every checkpoint
 * barrier ({@code prepareSnapshotPreBarrier}: nothing is buffered across a checkpoint, so the operator
 * has no state and exactly-once holds) and at the end of input. Records of one key keep their order,
 * and groups go out in the order of their first records, so the first records of the groups keep
 * their partition's offset order (which the serving job's source watch checks). A group of one record is sent as it came; a larger group is
 * {@code 0x00} followed by each envelope as a 4-byte big-endian length and its bytes (an envelope
 * starts with its topic's name, never with {@code 0x00}).
 *
 * <p>With {@code shards > 0} records are grouped by shard instead of by key: a key's shard is the CRC-32 of
 * its UTF-8 bytes modulo {@code shards} (Python's {@code zlib.crc32(key.encode()) % shards}), the output is
 * Row(shard, group) with the shard as an Integer, and every group, even of one record, is {@code 0x02}
 * followed by (4-byte length, key bytes, 4-byte length, envelope) for each record. Before each checkpoint
 * barrier, after sending every group on, it sends Row(shard, {@code 0x01}) for every shard it sent records
 * of since the last barrier: the keyed Python operator after it keeps what those records changed in memory
 * and writes it to Flink state when that marker comes, so the state is complete when the barrier reaches it
 * (checkpoints are aligned: a channel's marker always comes after its records and before its barrier).
 *
 * <p>With shards and {@code quietMs > 0}, once no record has come for {@code quietMs} after the last one
 * ({@link QuietWatch}), it sends Row(shard, {@code 0x03}) for every shard it sent records of since the last
 * such pause: the Python operator then scores the windows it holds at once instead of waiting up to its
 * batch wait for windows that are not coming (a burst of messages would otherwise leave its last windows
 * waiting; a backlog never pauses, so its batches stay full).
 */
public class ReadingGrouper extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {
    private static final long serialVersionUID = 1L;
    public static final byte MARK = 0;
    public static final byte CHECKPOINT_MARK = 1;
    public static final byte SHARD_MARK = 2;
    public static final byte QUIET_MARK = 3;
    public static final long RATE_SPAN_MS = 100;
    public static final double MIN_PER_GROUP = 2.0;
    public static final long SPARSE_DELAY_MS = 2;
    private final int maxRecords;
    private final long maxDelayMs;
    private final long maxBytes;
    private final int shards;
    private final long quietMs;
    private transient Map<Object, List<byte[]>> groups;
    private transient Set<Integer> sentShards; // shards sent records of since the last checkpoint barrier
    private transient Map<Object, Long> lastSeen; // per key, when its latest record came (recent keys only)
    private transient long lastSweep;
    private transient long buffered;
    private transient boolean timerSet;
    private transient GroupRate rate;
    private transient QuietWatch quiet; // null: no quiet markers
    private transient boolean quietTimerSet;

    public ReadingGrouper(int maxRecords, long maxDelayMs, long maxBytes) {
        this(maxRecords, maxDelayMs, maxBytes, 0);
    }

    public ReadingGrouper(int maxRecords, long maxDelayMs, long maxBytes, int shards) {
        this(maxRecords, maxDelayMs, maxBytes, shards, 0);
    }

    public ReadingGrouper(int maxRecords, long maxDelayMs, long maxBytes, int shards, long quietMs) {
        if (maxRecords < 1 || maxDelayMs < 0 || maxBytes < 1 || shards < 0 || quietMs < 0) {
            throw new IllegalArgumentException(
                    "ReadingGrouper: maxRecords and maxBytes must be >= 1, maxDelayMs, shards and quietMs >= 0");
        }
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
        this.maxBytes = maxBytes;
        this.shards = shards;
        this.quietMs = quietMs;
    }

    /** The shard of {@code key}: CRC-32 of its UTF-8 bytes modulo {@code shards}, as Python's zlib.crc32. */
    public static int shardOf(String key, int shards) {
        CRC32 crc = new CRC32();
        crc.update(key.getBytes(StandardCharsets.UTF_8));
        return (int) (crc.getValue() % shards);
    }

    @Override
    public void open() throws Exception {
        super.open();
        groups = new LinkedHashMap<>();
        sentShards = new LinkedHashSet<>();
        lastSeen = new HashMap<>();
        lastSweep = 0;
        buffered = 0;
        timerSet = false;
        rate = new GroupRate(maxDelayMs, SPARSE_DELAY_MS, RATE_SPAN_MS, MIN_PER_GROUP);
        quiet = shards > 0 && quietMs > 0 ? new QuietWatch(quietMs) : null;
        quietTimerSet = false;
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        if (quiet != null) {
            quiet.record(System.nanoTime());
        }
        Row row = element.getValue();
        String key = (String) row.getField(0);
        byte[] envelope = (byte[]) row.getField(1);
        Object groupKey = key;
        if (shards > 0) {
            groupKey = shardOf(key, shards);
            envelope = keyed(key, envelope);
        }
        if (maxDelayMs > 0) {
            long now = getProcessingTimeService().getCurrentProcessingTime();
            Long previous = lastSeen.put(groupKey, now);
            forgetQuietKeys(now);
            rate.record(groupKey, now);
            if (groups.isEmpty() && (previous == null || now - previous >= maxDelayMs)) { // nothing waits
                List<byte[]> alone = new ArrayList<>(1);
                alone.add(envelope);
                send(groupKey, alone);
                return;
            }
        }
        List<byte[]> group = groups.computeIfAbsent(groupKey, k -> new ArrayList<>());
        group.add(envelope);
        buffered += envelope.length;
        if (group.size() >= maxRecords || buffered > maxBytes || maxDelayMs == 0) {
            flushAll();
        } else if (!timerSet) {
            timerSet = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + rate.waitMs(), this);
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
        mark(sentShards, CHECKPOINT_MARK);
        sentShards.clear();
    }

    @Override
    public void finish() throws Exception {
        flushAll();
        if (quiet != null) {
            mark(quiet.takeAll(), QUIET_MARK);
        }
        super.finish();
    }

    /** Sends the quiet markers once the input has paused, or checks again when it may have. */
    private void onQuietCheck(long time) {
        quietTimerSet = false;
        if (!groups.isEmpty()) { // their flush sends them on and checks again
            return;
        }
        List<Object> keys = quiet.takeIfQuiet(System.nanoTime());
        if (keys.isEmpty()) {
            armQuietCheck();
        } else {
            mark(keys, QUIET_MARK);
        }
    }

    private void armQuietCheck() {
        if (quietTimerSet || !quiet.waiting()) {
            return;
        }
        quietTimerSet = true;
        long waitMs = Math.max(1L, (quiet.remainingNs(System.nanoTime()) + 999_999L) / 1_000_000L);
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + waitMs, this::onQuietCheck);
    }

    /** Sends the one-byte record {@code marker} to each shard of {@code targets}. */
    private void mark(Iterable<?> targets, byte marker) {
        for (Object shard : targets) {
            output.collect(new StreamRecord<>(Row.of(shard, new byte[] {marker})));
        }
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
        for (Map.Entry<Object, List<byte[]>> entry : groups.entrySet()) {
            send(entry.getKey(), entry.getValue());
        }
        groups.clear();
        buffered = 0;
    }

    private void send(Object groupKey, List<byte[]> group) {
        if (shards > 0) {
            sentShards.add((Integer) groupKey);
            output.collect(new StreamRecord<>(Row.of(groupKey, packKeyed(group))));
            if (quiet != null) {
                quiet.sent(groupKey);
                armQuietCheck();
            }
        } else {
            output.collect(new StreamRecord<>(Row.of(groupKey, pack(group))));
        }
    }

    /** (4-byte length, key bytes, 4-byte length, envelope): one record of a shard's group. */
    public static byte[] keyed(String key, byte[] envelope) {
        byte[] k = key.getBytes(StandardCharsets.UTF_8);
        ByteArrayOutputStream out = new ByteArrayOutputStream(8 + k.length + envelope.length);
        writeInt(out, k.length);
        out.write(k, 0, k.length);
        writeInt(out, envelope.length);
        out.write(envelope, 0, envelope.length);
        return out.toByteArray();
    }

    /** SHARD_MARK followed by the records made by {@link #keyed}, as they are. */
    public static byte[] packKeyed(List<byte[]> group) {
        int size = 1;
        for (byte[] record : group) {
            size += record.length;
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(size);
        out.write(SHARD_MARK);
        for (byte[] record : group) {
            out.write(record, 0, record.length);
        }
        return out.toByteArray();
    }

    private static void writeInt(ByteArrayOutputStream out, int n) {
        out.write(n >>> 24);
        out.write(n >>> 16);
        out.write(n >>> 8);
        out.write(n);
    }

    /** One envelope as it is; several as MARK, then (4-byte big-endian length, bytes) for each. */
    public static byte[] pack(List<byte[]> group) {
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
            writeInt(out, envelope.length);
            out.write(envelope, 0, envelope.length);
        }
        return out.toByteArray();
    }
}
