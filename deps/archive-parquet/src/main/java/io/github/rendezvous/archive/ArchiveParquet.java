package io.github.rendezvous.archive;

import java.io.IOException;
import java.io.OutputStream;
import java.util.HashMap;
import org.apache.flink.connector.file.sink.compactor.RecordWiseFileCompactor;
import org.apache.flink.core.fs.FSDataInputStream;
import org.apache.flink.core.fs.Path;
import org.apache.parquet.PlainReadOptions;
import org.apache.parquet.column.page.PageReadStore;
import org.apache.parquet.conf.ParquetConfiguration;
import org.apache.parquet.conf.PlainParquetConfiguration;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.GroupWriter;
import org.apache.parquet.example.data.simple.convert.GroupRecordConverter;
import org.apache.parquet.hadoop.ParquetFileReader;
import org.apache.parquet.hadoop.ParquetWriter;
import org.apache.parquet.hadoop.api.WriteSupport;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;
import org.apache.parquet.io.ColumnIOFactory;
import org.apache.parquet.io.DelegatingSeekableInputStream;
import org.apache.parquet.io.InputFile;
import org.apache.parquet.io.MessageColumnIO;
import org.apache.parquet.io.OutputFile;
import org.apache.parquet.io.PositionOutputStream;
import org.apache.parquet.io.RecordReader;
import org.apache.parquet.io.SeekableInputStream;
import org.apache.parquet.io.api.RecordConsumer;
import org.apache.parquet.schema.MessageType;

/** Parquet writers and readers of archive rows over Flink's streams, with no Hadoop class involved. */
final class ArchiveParquet {
  /** A row group holds at most this much (buffered in memory until it is full or the file ends). */
  static final long ROW_GROUP_BYTES = 64L * 1024 * 1024;

  private ArchiveParquet() {}

  static ParquetWriter<Group> writer(OutputStream out, long startPos) throws IOException {
    return new WriterBuilder(new StreamOutputFile(out, startPos))
        .withConf(new PlainParquetConfiguration())
        .withCodecFactory(ZstdCodecs.INSTANCE)
        .withCompressionCodec(CompressionCodecName.ZSTD)
        .withRowGroupSize(ROW_GROUP_BYTES)
        .build();
  }

  /**
   * The rows of one archive Parquet file, one row group in memory at a time. parquet-java's
   * ParquetReader class links Hadoop's file system types when it loads; ParquetFileReader, one level
   * down, does not (given options built without Hadoop: {@link PlainReadOptions}).
   */
  static final class RowReader implements RecordWiseFileCompactor.Reader<Object> {
    private final ParquetFileReader file;
    private final MessageType schema;
    private final MessageColumnIO io;
    private RecordReader<Group> rows;
    private long left;

    RowReader(Path path) throws IOException {
      file = ParquetFileReader.open(new FlinkInputFile(path), PlainReadOptions.of(ZstdCodecs.INSTANCE));
      schema = file.getFooter().getFileMetaData().getSchema();
      io = new ColumnIOFactory().getColumnIO(schema);
    }

    @Override
    public Object read() throws IOException {
      while (left == 0) {
        PageReadStore pages = file.readNextRowGroup();
        if (pages == null) {
          return null;
        }
        rows = io.getRecordReader(pages, new GroupRecordConverter(schema));
        left = pages.getRowCount();
      }
      left--;
      return rows.read();
    }

    @Override
    public void close() throws IOException {
      file.close();
    }
  }

  private static final class RowWriteSupport extends WriteSupport<Group> {
    private GroupWriter writer;

    @Override
    public WriteContext init(org.apache.hadoop.conf.Configuration conf) {
      return new WriteContext(ArchiveRows.SCHEMA, new HashMap<>());
    }

    @Override
    public WriteContext init(ParquetConfiguration conf) {
      return new WriteContext(ArchiveRows.SCHEMA, new HashMap<>());
    }

    @Override
    public void prepareForWrite(RecordConsumer consumer) {
      writer = new GroupWriter(consumer, ArchiveRows.SCHEMA);
    }

    @Override
    public void write(Group row) {
      writer.write(row);
    }
  }

  private static final class WriterBuilder extends ParquetWriter.Builder<Group, WriterBuilder> {
    WriterBuilder(OutputFile file) {
      super(file);
    }

    @Override
    protected WriterBuilder self() {
      return this;
    }

    @Override
    protected WriteSupport<Group> getWriteSupport(org.apache.hadoop.conf.Configuration conf) {
      return new RowWriteSupport();
    }

    @Override
    protected WriteSupport<Group> getWriteSupport(ParquetConfiguration conf) {
      return new RowWriteSupport();
    }
  }

  /**
   * Parquet's output over a stream it must not close: Flink closes a part file's stream itself after
   * {@code BulkWriter.finish()}, and the compactor's stream belongs to the compacting file writer.
   */
  private static final class StreamOutputFile implements OutputFile {
    private final OutputStream out;
    private final long startPos;

    StreamOutputFile(OutputStream out, long startPos) {
      this.out = out;
      this.startPos = startPos;
    }

    @Override
    public PositionOutputStream create(long blockSizeHint) {
      return new PositionOutputStream() {
        private long pos = startPos;

        @Override
        public long getPos() {
          return pos;
        }

        @Override
        public void write(int b) throws IOException {
          out.write(b);
          pos++;
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
          out.write(b, off, len);
          pos += len;
        }

        @Override
        public void flush() throws IOException {
          out.flush();
        }

        @Override
        public void close() throws IOException {
          out.flush(); // not closed: its owner closes it
        }
      };
    }

    @Override
    public PositionOutputStream createOrOverwrite(long blockSizeHint) {
      return create(blockSizeHint);
    }

    @Override
    public boolean supportsBlockSize() {
      return false;
    }

    @Override
    public long defaultBlockSize() {
      return 0;
    }
  }

  /** A file on any Flink file system (local, S3, ...) as Parquet's seekable input. */
  private static final class FlinkInputFile implements InputFile {
    private final Path path;

    FlinkInputFile(Path path) {
      this.path = path;
    }

    @Override
    public long getLength() throws IOException {
      return path.getFileSystem().getFileStatus(path).getLen();
    }

    @Override
    public SeekableInputStream newStream() throws IOException {
      FSDataInputStream in = path.getFileSystem().open(path);
      return new DelegatingSeekableInputStream(in) {
        @Override
        public long getPos() throws IOException {
          return in.getPos();
        }

        @Override
        public void seek(long newPos) throws IOException {
          in.seek(newPos);
        }
      };
    }
  }
}
