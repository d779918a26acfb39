"""Development tools: the demo, the local Kafka broker, TLS material, the emulator."""
