package io.github.rendezvous.archive;

import java.io.IOException;
import org.apache.flink.api.common.serialization.BulkWriter;
import org.apache.flink.core.fs.FSDataOutputStream;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.hadoop.ParquetWriter;

/**
 * One Parquet file per part file. Elements are the job's archive JSON lines (strings), parsed into
 * typed columns here, or rows already typed: those the compactor reads back from part files
 * ({@link ArchiveSink}), which is why the element type is Object.
 */
public final class ParquetArchiveWriterFactory implements BulkWriter.Factory<Object> {
  private static final long serialVersionUID = 1L;

  @Override
  public BulkWriter<Object> create(FSDataOutputStream out) throws IOException {
    ParquetWriter<Group> writer = ArchiveParquet.writer(out, out.getPos());
    return new BulkWriter<>() {
      @Override
      public void addElement(Object element) throws IOException {
        writer.write(element instanceof Group ? (Group) element : ArchiveRows.fromJson((String) element));
      }

      @Override
      public void flush() {
        // A Parquet file cannot be flushed part-way (its footer comes last): files roll on checkpoint.
      }

      @Override
      public void finish() throws IOException {
        writer.close(); // writes the last row group and the footer; the stream stays open for Flink
      }
    };
  }
}
