"""What the product needs to run: Kafka clients and topics, the broker, Flink's configuration, the
session cluster and its savepoint upgrade, the decoy archive, policy publishing. Imports only ``udfs``."""
