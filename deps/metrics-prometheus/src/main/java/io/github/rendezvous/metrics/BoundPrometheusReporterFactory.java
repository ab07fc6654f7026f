package io.github.rendezvous.metrics;

import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.prometheus.BoundPrometheusReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;
import org.apache.flink.util.PortRange;

import java.util.Properties;

/**
 * Flink's Prometheus reporter on one interface: {@code metrics.reporter.<name>.factory.class} set to this
 * class, with {@code host} (default {@value #DEFAULT_HOST}) and {@code port} (a port, a range such as
 * {@code 9250-9260} or a list, default {@value #DEFAULT_PORT}, as Flink's {@code PrometheusReporterFactory}).
 *
 * <p>Why: Flink's factory has no host option and its reporter listens on every interface, without
 * authentication. Loopback is the default here; {@code 0.0.0.0} says on purpose that a scraper on another
 * host (or pod) may read it.
 */
public class BoundPrometheusReporterFactory implements MetricReporterFactory {

    static final String ARG_HOST = "host";
    static final String ARG_PORT = "port";
    static final String DEFAULT_HOST = "127.0.0.1";
    static final String DEFAULT_PORT = "9249";

    @Override
    public BoundPrometheusReporter createMetricReporter(Properties properties) {
        MetricConfig config = (MetricConfig) properties;
        String host = config.getString(ARG_HOST, DEFAULT_HOST).trim();
        PortRange ports = new PortRange(config.getString(ARG_PORT, DEFAULT_PORT));
        return new BoundPrometheusReporter(host, ports);
    }
}
