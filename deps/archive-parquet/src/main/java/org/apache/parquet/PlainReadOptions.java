package org.apache.parquet;

import java.util.HashMap;
import org.apache.parquet.bytes.HeapByteBufferAllocator;
import org.apache.parquet.compression.CompressionCodecFactory;
import org.apache.parquet.conf.PlainParquetConfiguration;
import org.apache.parquet.filter2.compat.FilterCompat;
import org.apache.parquet.format.converter.ParquetMetadataConverter;

/**
 * Read options built without Hadoop. parquet-java 1.15's public builders of {@link ParquetReadOptions}
 * load Hadoop classes (HadoopParquetConfiguration, ParquetInputFormat), which the job's class path does
 * not have; this class sits in the options' package to reach their constructor directly. Pinned to the
 * parquet-java version of deps/archive-parquet/pom.xml.
 */
public final class PlainReadOptions {
  private static final int MAX_ALLOCATION_BYTES = 8 * 1024 * 1024; // parquet-java's default

  private PlainReadOptions() {}

  /** Every row, no filter, pages decompressed by {@code codecs}. */
  public static ParquetReadOptions of(CompressionCodecFactory codecs) {
    return new ParquetReadOptions(
        false, false, false, false, false, false, false, false, false,
        FilterCompat.NOOP,
        ParquetMetadataConverter.NO_FILTER,
        codecs,
        new HeapByteBufferAllocator(),
        MAX_ALLOCATION_BYTES,
        new HashMap<>(),
        null,
        null,
        new PlainParquetConfiguration());
  }
}
