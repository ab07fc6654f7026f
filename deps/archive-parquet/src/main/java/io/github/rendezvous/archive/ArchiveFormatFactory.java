package io.github.rendezvous.archive;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.reader.BulkFormat;
import org.apache.flink.connector.file.src.util.CheckpointedPosition;
import org.apache.flink.connector.file.src.util.IteratorResultIterator;
import org.apache.flink.connector.file.table.factories.BulkReaderFormatFactory;
import org.apache.flink.connector.file.table.format.BulkDecodingFormat;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.RowType;
import org.apache.parquet.example.data.Group;

/**
 * Flink SQL's reader of the archive's files: {@code 'format' = 'rendezvous-archive'} on a filesystem
 * table (ops/archive.py {@code flink_sql_ddl}). Flink's own Parquet format is not to be had here; the
 * filesystem source around this format lists the partitions, prunes them on {@code dt}/{@code hour}
 * filters and adds those columns from the paths. Columns are matched to the file's by name.
 */
public final class ArchiveFormatFactory implements BulkReaderFormatFactory {
  public static final String IDENTIFIER = "rendezvous-archive";

  @Override
  public BulkDecodingFormat<RowData> createDecodingFormat(
      DynamicTableFactory.Context context, ReadableConfig formatOptions) {
    return new BulkDecodingFormat<>() {
      @Override
      public BulkFormat<RowData, FileSourceSplit> createRuntimeDecoder(
          DynamicTableSource.Context sourceContext, DataType physicalType) {
        return new RowsFormat(
            (RowType) physicalType.getLogicalType(), sourceContext.createTypeInformation(physicalType));
      }

      @Override
      public ChangelogMode getChangelogMode() {
        return ChangelogMode.insertOnly();
      }
    };
  }

  @Override
  public String factoryIdentifier() {
    return IDENTIFIER;
  }

  @Override
  public Set<ConfigOption<?>> requiredOptions() {
    return Collections.emptySet();
  }

  @Override
  public Set<ConfigOption<?>> optionalOptions() {
    return Collections.emptySet();
  }

  /** Whole files (not splittable), one row group per batch. */
  static final class RowsFormat implements BulkFormat<RowData, FileSourceSplit> {
    private static final long serialVersionUID = 1L;
    private final RowType rowType;
    private final TypeInformation<RowData> producedType;

    RowsFormat(RowType rowType, TypeInformation<RowData> producedType) {
      this.rowType = rowType;
      this.producedType = producedType;
    }

    @Override
    public Reader<RowData> createReader(Configuration config, FileSourceSplit split) throws IOException {
      return new RowsReader(split, rowType, 0);
    }

    @Override
    public Reader<RowData> restoreReader(Configuration config, FileSourceSplit split) throws IOException {
      long skip = split.getReaderPosition().map(CheckpointedPosition::getRecordsAfterOffset).orElse(0L);
      return new RowsReader(split, rowType, skip);
    }

    @Override
    public boolean isSplittable() {
      return false;
    }

    @Override
    public TypeInformation<RowData> getProducedType() {
      return producedType;
    }
  }

  private static final class RowsReader implements BulkFormat.Reader<RowData> {
    private static final int BATCH = 4096;
    private final ArchiveParquet.RowReader rows;
    private final RowType rowType;
    private final int[] fileIndex; // the file column of each table column (-1: none, always NULL)
    private long emitted;

    RowsReader(FileSourceSplit split, RowType rowType, long skip) throws IOException {
      this.rows = new ArchiveParquet.RowReader(split.path());
      this.rowType = rowType;
      this.fileIndex = new int[rowType.getFieldCount()];
      for (int i = 0; i < fileIndex.length; i++) {
        String name = rowType.getFieldNames().get(i);
        fileIndex[i] = ArchiveRows.SCHEMA.containsField(name) ? ArchiveRows.SCHEMA.getFieldIndex(name) : -1;
      }
      for (; emitted < skip && rows.read() != null; emitted++) {
        // restored: the rows before the checkpointed position were emitted already
      }
    }

    @Override
    public BulkFormat.RecordIterator<RowData> readBatch() throws IOException {
      List<RowData> batch = new ArrayList<>(BATCH);
      while (batch.size() < BATCH) {
        Object row = rows.read();
        if (row == null) {
          break;
        }
        batch.add(convert((Group) row));
      }
      if (batch.isEmpty()) {
        return null;
      }
      long skipBefore = emitted;
      emitted += batch.size();
      return new IteratorResultIterator<>(batch.iterator(), CheckpointedPosition.NO_OFFSET, skipBefore);
    }

    private RowData convert(Group row) {
      GenericRowData out = new GenericRowData(fileIndex.length);
      for (int i = 0; i < fileIndex.length; i++) {
        int f = fileIndex[i];
        if (f < 0 || row.getFieldRepetitionCount(f) == 0) {
          continue; // NULL
        }
        LogicalTypeRoot type = rowType.getTypeAt(i).getTypeRoot();
        if (type == LogicalTypeRoot.BIGINT) {
          out.setField(i, row.getLong(f, 0));
        } else if (type == LogicalTypeRoot.INTEGER) {
          out.setField(i, row.getInteger(f, 0));
        } else {
          out.setField(i, StringData.fromString(row.getString(f, 0)));
        }
      }
      return out;
    }

    @Override
    public void close() throws IOException {
      rows.close();
    }
  }
}
