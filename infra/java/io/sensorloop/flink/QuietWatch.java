package io.sensorloop.flink;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;

/**
 * When a {@link ReadingGrouper}'s input has paused: no record for {@code quietMs} since the last one. It
 * remembers the keys (shards) the grouper sent records of since it last said so; {@link #takeIfQuiet} hands
 * them over once the input is quiet, so the grouper can tell each of those shards that nothing more came
 * for now (the Python operator then scores the windows it holds instead of waiting for a fuller batch). A
 * backlog keeps records coming, so it is never quiet there; a burst of messages is quiet {@code quietMs}
 * after its last record. Times are in nanoseconds (a monotonic clock), never going back.
 */
public final class QuietWatch {
    private final long quietNs;
    private final Set<Object> sent = new LinkedHashSet<>();
    private long lastRecordNs;

    public QuietWatch(long quietMs) {
        if (quietMs < 1) {
            throw new IllegalArgumentException("QuietWatch: quietMs must be >= 1");
        }
        this.quietNs = quietMs * 1_000_000L;
    }

    /** A record came at {@code nowNs}. */
    public void record(long nowNs) {
        lastRecordNs = nowNs;
    }

    /** Records of {@code key} were sent on. */
    public void sent(Object key) {
        sent.add(key);
    }

    /** Whether keys wait to be told that the input paused. */
    public boolean waiting() {
        return !sent.isEmpty();
    }

    /** Nanoseconds from {@code nowNs} until the input counts as quiet (0 once it does). */
    public long remainingNs(long nowNs) {
        return Math.max(0L, lastRecordNs + quietNs - nowNs);
    }

    /** The keys sent since the last quiet, in the order they were first sent, once no record came for
     * {@code quietMs} (they are forgotten then); else an empty list. */
    public List<Object> takeIfQuiet(long nowNs) {
        if (sent.isEmpty() || remainingNs(nowNs) > 0) {
            return new ArrayList<>();
        }
        return takeAll();
    }

    /** Every key sent since the last quiet, quiet or not (at the end of input). */
    public List<Object> takeAll() {
        List<Object> keys = new ArrayList<>(sent);
        sent.clear();
        return keys;
    }
}
