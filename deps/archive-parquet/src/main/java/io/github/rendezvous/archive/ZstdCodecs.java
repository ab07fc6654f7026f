package io.github.rendezvous.archive;

import com.github.luben.zstd.Zstd;
import java.io.IOException;
import java.nio.ByteBuffer;
import org.apache.parquet.bytes.BytesInput;
import org.apache.parquet.compression.CompressionCodecFactory;
import org.apache.parquet.hadoop.metadata.CompressionCodecName;

/**
 * ZSTD pages through zstd-jni, without Hadoop: parquet-java's own codec factory reaches its codecs
 * through Hadoop's {@code CompressionCodec} classes, which are not on the job's class path.
 */
final class ZstdCodecs implements CompressionCodecFactory {
  static final ZstdCodecs INSTANCE = new ZstdCodecs();
  static final int LEVEL = 3; // zstd's default: most of the ratio of higher levels, at a fraction of the CPU

  private static final BytesInputCompressor COMPRESSOR =
      new BytesInputCompressor() {
        @Override
        public BytesInput compress(BytesInput bytes) throws IOException {
          return BytesInput.from(Zstd.compress(bytes.toByteArray(), LEVEL));
        }

        @Override
        public CompressionCodecName getCodecName() {
          return CompressionCodecName.ZSTD;
        }

        @Override
        public void release() {}
      };

  private static final BytesInputDecompressor DECOMPRESSOR =
      new BytesInputDecompressor() {
        @Override
        public BytesInput decompress(BytesInput bytes, int decompressedSize) throws IOException {
          return BytesInput.from(Zstd.decompress(bytes.toByteArray(), decompressedSize));
        }

        @Override
        public void decompress(ByteBuffer input, int compressedSize, ByteBuffer output, int decompressedSize)
            throws IOException {
          byte[] src = new byte[compressedSize];
          input.get(src);
          output.put(Zstd.decompress(src, decompressedSize));
        }

        @Override
        public void release() {}
      };

  private ZstdCodecs() {}

  @Override
  public BytesInputCompressor getCompressor(CompressionCodecName codec) {
    if (codec != CompressionCodecName.ZSTD) {
      throw new UnsupportedOperationException("the archive writes ZSTD pages only, not " + codec);
    }
    return COMPRESSOR;
  }

  @Override
  public BytesInputDecompressor getDecompressor(CompressionCodecName codec) {
    if (codec != CompressionCodecName.ZSTD) {
      throw new UnsupportedOperationException("the archive reads ZSTD pages only, not " + codec);
    }
    return DECOMPRESSOR;
  }

  @Override
  public void release() {}
}
