"""Operating the stack: broker, topics, load generator, demo, archive SQL."""
