package io.github.rendezvous.archive;

import static org.apache.parquet.schema.LogicalTypeAnnotation.stringType;
import static org.apache.parquet.schema.PrimitiveType.PrimitiveTypeName.BINARY;
import static org.apache.parquet.schema.PrimitiveType.PrimitiveTypeName.INT32;
import static org.apache.parquet.schema.PrimitiveType.PrimitiveTypeName.INT64;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import org.apache.parquet.example.data.Group;
import org.apache.parquet.example.data.simple.SimpleGroup;
import org.apache.parquet.schema.MessageType;
import org.apache.parquet.schema.Type;
import org.apache.parquet.schema.Types;

/**
 * An archive row (schemas/archive_row.schema.json) as a Parquet record: its columns in its order.
 *
 * <p>The job's mailbox (Python) emits each row as one JSON line, one string across the Python/Java
 * boundary; it is parsed here, in the sink's own thread, into typed columns. {@code features} stays the
 * JSON text the mailbox wrote (sorted keys): a request's features may be any JSON object, and the text
 * keeps every value as it arrived (DuckDB reads it with {@code features->>'amount'}). The partition
 * columns (dt, hour) are in the directory names only, as Hive and Flink's filesystem tables do.
 */
final class ArchiveRows {
  static final MessageType SCHEMA =
      Types.buildMessage()
          .required(BINARY).as(stringType()).named("request_id")
          .required(INT64).named("received_at_ms")
          .optional(INT64).named("sent_at_ms")
          .optional(BINARY).as(stringType()).named("return_address")
          .optional(BINARY).as(stringType()).named("source_topic")
          .optional(INT32).named("partition")
          .optional(INT64).named("offset")
          .optional(BINARY).as(stringType()).named("features")
          .optional(BINARY).as(stringType()).named("raw")
          .named("archive_row");

  static final String RECEIVED_AT_MS = "received_at_ms";
  private static final JsonFactory JSON = new JsonFactory();

  private ArchiveRows() {}

  /** The row of one archive JSON line; fields not in the schema are ignored, nulls left out. */
  static Group fromJson(String line) throws IOException {
    Group row = new SimpleGroup(SCHEMA);
    try (JsonParser p = JSON.createParser(line)) {
      expect(p.nextToken() == JsonToken.START_OBJECT, line);
      while (p.nextToken() == JsonToken.FIELD_NAME) {
        String name = p.currentName();
        JsonToken value = p.nextToken();
        if (value == JsonToken.VALUE_NULL || !SCHEMA.containsField(name)) {
          p.skipChildren();
          continue;
        }
        int i = SCHEMA.getFieldIndex(name);
        Type type = SCHEMA.getType(i);
        switch (type.asPrimitiveType().getPrimitiveTypeName()) {
          case INT64:
            if (fits(p, JsonParser.NumberType.LONG)) {
              row.add(i, p.getLongValue());
            }
            break;
          case INT32:
            if (fits(p, JsonParser.NumberType.INT)) {
              row.add(i, p.getIntValue());
            }
            break;
          default:
            row.add(i, p.getText());
        }
      }
    }
    expect(row.getFieldRepetitionCount(0) == 1 && row.getFieldRepetitionCount(1) == 1, line);
    return row;
  }

  /**
   * Whether the current value is an integer that fits the column. A client may send a {@code sent_at_ms}
   * beyond 64 bits (the request schema sets no maximum, and Python's integers have none): its column is
   * then NULL, and {@code raw} keeps it as sent. Failing here would fail the job on every replay.
   */
  private static boolean fits(JsonParser p, JsonParser.NumberType widest) throws IOException {
    if (p.currentToken() != JsonToken.VALUE_NUMBER_INT) {
      return false;
    }
    JsonParser.NumberType t = p.getNumberType();
    return t == JsonParser.NumberType.INT || t == widest;
  }

  /** {@code received_at_ms} of one archive JSON line, read up to that field only. */
  static long receivedAtMs(String line) throws IOException {
    try (JsonParser p = JSON.createParser(line)) {
      expect(p.nextToken() == JsonToken.START_OBJECT, line);
      while (p.nextToken() == JsonToken.FIELD_NAME) {
        String name = p.currentName();
        p.nextToken();
        if (RECEIVED_AT_MS.equals(name)) {
          return p.getLongValue();
        }
        p.skipChildren();
      }
    }
    throw new IOException("archive line without received_at_ms: " + abbreviate(line));
  }

  private static void expect(boolean ok, String line) throws IOException {
    if (!ok) {
      throw new IOException("not an archive row (request_id, received_at_ms): " + abbreviate(line));
    }
  }

  private static String abbreviate(String line) {
    return line.length() <= 200 ? line : line.substring(0, 200) + "...";
  }
}
