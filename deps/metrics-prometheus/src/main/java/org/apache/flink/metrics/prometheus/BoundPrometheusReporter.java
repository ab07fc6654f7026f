package org.apache.flink.metrics.prometheus;

import org.apache.flink.util.PortRange;

import io.prometheus.client.exporter.HTTPServer;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.Iterator;

/**
 * Flink's {@link PrometheusReporter}, but its HTTP server listens on one address ({@code host}) instead of
 * every interface. The first free port of {@code ports} is taken, as Flink's reporter does.
 *
 * <p>In Flink's package because the registry it serves ({@code AbstractPrometheusReporter.registry}) is
 * package-private: this class must be loaded by the class loader of flink-metrics-prometheus (the same
 * class path, or the same plugins directory), which {@code deps/metrics-prometheus/pom.xml} explains.
 */
public class BoundPrometheusReporter extends AbstractPrometheusReporter {

    private final HTTPServer httpServer;
    private final InetSocketAddress address;

    public BoundPrometheusReporter(String host, PortRange ports) {
        HTTPServer server = null;
        InetSocketAddress bound = null;
        Iterator<Integer> it = ports.getPortsIterator();
        while (server == null && it.hasNext()) {
            InetSocketAddress candidate = new InetSocketAddress(host, it.next());
            if (candidate.isUnresolved()) {
                throw new IllegalArgumentException(
                        "metrics reporter host: cannot resolve " + host + " to an address");
            }
            try {
                server = new HTTPServer(candidate, registry);
                bound = candidate;
            } catch (IOException e) {
                log.debug("Could not start PrometheusReporter HTTP server on {}.", candidate, e);
            }
        }
        if (server == null) {
            throw new RuntimeException(
                    "Could not start PrometheusReporter HTTP server on " + host + " on any port in range " + ports);
        }
        httpServer = server;
        address = new InetSocketAddress(bound.getAddress(), server.getPort());
        log.info("Started PrometheusReporter HTTP server on {}.", address);
    }

    /** Where the server listens (the port taken from the range). */
    public InetSocketAddress getAddress() {
        return address;
    }

    @Override
    public void close() {
        httpServer.stop();
        super.close();
    }
}
