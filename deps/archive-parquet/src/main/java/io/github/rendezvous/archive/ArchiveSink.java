package io.github.rendezvous.archive;

import org.apache.flink.connector.file.sink.FileSink;
import org.apache.flink.connector.file.sink.compactor.FileCompactStrategy;
import org.apache.flink.connector.file.sink.compactor.RecordWiseFileCompactor;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.functions.sink.filesystem.OutputFileConfig;
import org.apache.flink.streaming.api.functions.sink.filesystem.rollingpolicies.OnCheckpointRollingPolicy;

/**
 * The decoy archive's sink (jobs/rendezvous_job.py builds it through here): archive JSON lines in,
 * Parquet files out under {@code <base>/dt=YYYY-MM-DD/hour=HH/}, exactly once.
 *
 * <p>Part files roll on every checkpoint. With compaction, the part files of one partition written
 * over {@code compactEveryCheckpoints} checkpoints, by every subtask, are read back and written again
 * as one file ({@code compacted-part-*.parquet}, one row group per 64 MB) before anything is
 * committed; the part files themselves stay hidden (dot-prefixed) and are deleted. A reader therefore
 * sees committed, compacted files only and never counts a row twice.
 */
public final class ArchiveSink {
  public static final String PART_PREFIX = "part";
  public static final String PART_SUFFIX = ".parquet";

  private ArchiveSink() {}

  /** The compactor's reader of part files (a named class: it is serialized into the job graph). */
  static final class RowReaders implements RecordWiseFileCompactor.Reader.Factory<Object> {
    private static final long serialVersionUID = 1L;

    @Override
    public RecordWiseFileCompactor.Reader<Object> createFor(Path path) throws java.io.IOException {
      return new ArchiveParquet.RowReader(path);
    }
  }

  /** {@code compactEveryCheckpoints} 0: no compaction, one file per subtask, partition and checkpoint. */
  public static FileSink<Object> build(String basePath, int compactEveryCheckpoints) {
    var builder =
        FileSink.forBulkFormat(new Path(basePath), new ParquetArchiveWriterFactory())
            .withBucketAssigner(new RequestHourBucketAssigner())
            .withOutputFileConfig(
                OutputFileConfig.builder().withPartPrefix(PART_PREFIX).withPartSuffix(PART_SUFFIX).build())
            .withRollingPolicy(OnCheckpointRollingPolicy.build());
    if (compactEveryCheckpoints > 0) {
      builder =
          builder.enableCompact(
              FileCompactStrategy.Builder.newBuilder()
                  .enableCompactionOnCheckpoint(compactEveryCheckpoints)
                  .build(),
              new RecordWiseFileCompactor<>(new RowReaders()));
    }
    return builder.build();
  }
}
