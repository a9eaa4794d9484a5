"""Services that read Kafka: the analyzer, the predictions subscriber (watch), the demo."""
