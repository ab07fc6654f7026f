package io.github.rendezvous.archive;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.streaming.api.functions.sink.filesystem.BucketAssigner;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.SimpleVersionedStringSerializer;

/**
 * Each row goes to the Hive partition of its request's hour, {@code dt=YYYY-MM-DD/hour=HH} (UTC), by
 * {@code received_at_ms}: when the job read the request, on the job's clock. Not {@code sent_at_ms},
 * the client's claim, which a wrong client clock would scatter over any date.
 */
public final class RequestHourBucketAssigner implements BucketAssigner<Object, String> {
  private static final long serialVersionUID = 1L;
  private static final long HOUR_MS = 3_600_000L;

  private transient long hourStart = Long.MIN_VALUE;
  private transient String hourBucket;

  @Override
  public String getBucketId(Object line, Context context) {
    long ms;
    try {
      ms = ArchiveRows.receivedAtMs((String) line); // the writers get the job's lines only
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    long start = Math.floorDiv(ms, HOUR_MS) * HOUR_MS;
    if (start != hourStart) { // rows come in time order, nearly: one formatting per hour
      hourBucket = partition(ms);
      hourStart = start;
    }
    return hourBucket;
  }

  /** The partition path of a time in epoch milliseconds. */
  public static String partition(long epochMs) {
    ZonedDateTime t = Instant.ofEpochMilli(epochMs).atZone(ZoneOffset.UTC);
    return String.format("dt=%s/hour=%02d", t.toLocalDate(), t.getHour());
  }

  @Override
  public SimpleVersionedSerializer<String> getSerializer() {
    return SimpleVersionedStringSerializer.INSTANCE;
  }

  @Override
  public String toString() {
    return "RequestHourBucketAssigner";
  }
}
