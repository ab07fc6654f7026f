package org.apache.flink.connector.kafka.sink;

import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.Producer;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.PartitionInfo;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * rendezvous's replacement of the Flink Kafka connector's {@code DefaultKafkaSinkContext}
 * (flink-connector-kafka 5.0.0; same name, constructor and answers).
 *
 * <p>The connector's table sink asks for the partitions of every record's topic, with or without a
 * partitioner, and the original context answers a topic it has not seen by making a new {@code
 * KafkaProducer}, reading the topic's partitions and closing the producer, on the task thread: tens of
 * milliseconds for the first answer to each new return address, during which the whole task waits.
 * This one asks one lookup producer, made at the first new topic and kept while new topics come; it is
 * closed after {@link #IDLE_CLOSE_MS} without a lookup (a daemon thread checks), so an idle or finished
 * job holds no extra producer. Answers are cached per topic, as the original does.
 */
public class DefaultKafkaSinkContext implements KafkaRecordSerializationSchema.KafkaSinkContext {

    /** The lookup producer is closed after this long without a lookup. */
    static final long IDLE_CLOSE_MS = 60_000L;

    private static final long CHECK_EVERY_MS = 5_000L;
    private static final AtomicInteger LOOKUPS = new AtomicInteger();

    private final int subtaskId;
    private final int numberOfParallelInstances;
    private final Properties kafkaProducerConfig;

    private final Map<String, int[]> cachedPartitions = new HashMap<>();

    private final Object lock = new Object();
    private Producer<?, ?> lookup; // guarded by lock
    private ScheduledExecutorService closer; // guarded by lock
    private long lastLookupNanos; // guarded by lock

    public DefaultKafkaSinkContext(
            int subtaskId, int numberOfParallelInstances, Properties kafkaProducerConfig) {
        this.subtaskId = subtaskId;
        this.numberOfParallelInstances = numberOfParallelInstances;
        this.kafkaProducerConfig = kafkaProducerConfig;
    }

    @Override
    public int getParallelInstanceId() {
        return subtaskId;
    }

    @Override
    public int getNumberOfParallelInstances() {
        return numberOfParallelInstances;
    }

    @Override
    public int[] getPartitionsForTopic(String topic) {
        int[] partitions = cachedPartitions.get(topic);
        if (partitions == null) {
            partitions = fetchPartitionsForTopic(topic);
            cachedPartitions.put(topic, partitions);
        }
        return partitions;
    }

    private int[] fetchPartitionsForTopic(String topic) {
        synchronized (lock) {
            if (lookup == null) {
                lookup = new KafkaProducer<>(lookupConfig(kafkaProducerConfig, subtaskId));
                closer =
                        Executors.newSingleThreadScheduledExecutor(
                                r -> {
                                    Thread t = new Thread(r, "kafka-sink-partition-lookup-closer");
                                    t.setDaemon(true);
                                    return t;
                                });
                closer.scheduleWithFixedDelay(
                        this::closeIfIdle, CHECK_EVERY_MS, CHECK_EVERY_MS, TimeUnit.MILLISECONDS);
            }
            lastLookupNanos = System.nanoTime();
            // the fetched list is immutable: a mutable copy, sorted by partition, as the original
            final List<PartitionInfo> partitionsList = new ArrayList<>(lookup.partitionsFor(topic));
            return partitionsList.stream()
                    .sorted(Comparator.comparing(PartitionInfo::partition))
                    .mapToInt(PartitionInfo::partition)
                    .toArray();
        }
    }

    private void closeIfIdle() {
        synchronized (lock) {
            if (lookup == null
                    || System.nanoTime() - lastLookupNanos < TimeUnit.MILLISECONDS.toNanos(IDLE_CLOSE_MS)) {
                return;
            }
            try {
                lookup.close();
            } finally {
                lookup = null;
                closer.shutdown();
                closer = null;
            }
        }
    }

    /**
     * The writer's producer settings for a producer that only reads metadata: no transactional id (it
     * never sends, and must not fence the writer's), its own client id (no clash of metric names: a job has several sinks).
     */
    static Properties lookupConfig(Properties writerConfig, int subtaskId) {
        final Properties config = new Properties();
        config.putAll(writerConfig);
        config.remove("transactional.id");
        final Object clientId = writerConfig.get("client.id");
        config.put(
                "client.id",
                (clientId == null ? "flink-kafka-sink" : clientId.toString())
                        + "-partition-lookup-"
                        + subtaskId
                        + "-"
                        + LOOKUPS.incrementAndGet());
        return config;
    }
}
