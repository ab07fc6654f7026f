"""Model runners: training, load()+score() models, and the Kafka loop around them."""
