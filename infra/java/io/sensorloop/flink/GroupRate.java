package io.sensorloop.flink;

import java.util.HashSet;
import java.util.Set;

/**
 * How long a {@link ReadingGrouper} holds records for their group, from the rate they come at: the full
 * {@code waitMs} while a key's group would hold at least {@code minPerGroup} records on average within it,
 * and only {@code sparseWaitMs} while the stream is thinner ({@link #sparse}): then a full wait would add
 * latency and hardly group anything (1,000 messages/s over 8 shards gives 1.25 records per 10 ms group),
 * while a short one still groups a burst (a fetch's worth of records, or what a backpressured source sends
 * at once). Records are counted in spans of {@code spanMs}; at the end of each span the rate of the span
 * just ended decides for the next: records per key seen in it × {@code waitMs} / its length. The first span
 * counts as dense.
 */
public final class GroupRate {
    private final long waitMs;
    private final long sparseWaitMs;
    private final long spanMs;
    private final double minPerGroup;
    private final Set<Object> keys = new HashSet<>();
    private long spanStart = Long.MIN_VALUE;
    private long records;
    private boolean sparse;

    public GroupRate(long waitMs, long sparseWaitMs, long spanMs, double minPerGroup) {
        if (waitMs < 0 || sparseWaitMs < 0 || spanMs < 1 || minPerGroup < 0) {
            throw new IllegalArgumentException(
                    "GroupRate: waitMs and sparseWaitMs >= 0, spanMs >= 1 and minPerGroup >= 0");
        }
        this.waitMs = waitMs;
        this.sparseWaitMs = Math.min(waitMs, sparseWaitMs);
        this.spanMs = spanMs;
        this.minPerGroup = minPerGroup;
    }

    /** Counts a record of {@code key} at {@code nowMs} (times never going back); returns {@link #sparse}. */
    public boolean record(Object key, long nowMs) {
        if (spanStart == Long.MIN_VALUE) {
            spanStart = nowMs;
        } else if (nowMs - spanStart >= spanMs) {
            double perGroup = (double) records / Math.max(1, keys.size()) * waitMs / (nowMs - spanStart);
            sparse = perGroup < minPerGroup;
            spanStart = nowMs;
            records = 0;
            keys.clear();
        }
        records++;
        keys.add(key);
        return sparse;
    }

    /** Whether the last span ended was too thin for groups of {@code waitMs} to form. */
    public boolean sparse() {
        return sparse;
    }

    /** How long a record buffered now may wait for its group. */
    public long waitMs() {
        return sparse ? sparseWaitMs : waitMs;
    }
}
