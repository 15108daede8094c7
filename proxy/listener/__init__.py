"""Our downstream: the Kafka listener and its commit watermarks."""
