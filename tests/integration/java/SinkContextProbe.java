import org.apache.flink.connector.kafka.sink.DefaultKafkaSinkContext;

import java.util.Arrays;
import java.util.Properties;

/**
 * Run by tests/integration/test_sink_context.py with the job's pipeline.jars as the class path, in
 * their order: prints which jar served DefaultKafkaSinkContext, then the partitions it reports for
 * each topic given, twice (the second answer comes from its cache), and the time each lookup took.
 */
public class SinkContextProbe {
    public static void main(String[] args) {
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        config.put("key.serializer", "org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.ByteArraySerializer");
        config.put("value.serializer", "org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.ByteArraySerializer");
        DefaultKafkaSinkContext context = new DefaultKafkaSinkContext(0, 1, config);
        System.out.println("source " + DefaultKafkaSinkContext.class.getProtectionDomain().getCodeSource().getLocation());
        for (int round = 0; round < 2; round++) {
            for (int i = 1; i < args.length; i++) {
                long t0 = System.nanoTime();
                int[] partitions = context.getPartitionsForTopic(args[i]);
                long us = (System.nanoTime() - t0) / 1000;
                System.out.println("topic " + args[i] + " " + Arrays.toString(partitions) + " " + us);
            }
        }
    }
}
