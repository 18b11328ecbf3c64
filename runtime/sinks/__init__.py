"""Where results go: JSON lines, MQTT, saved frames. Each sink implements `base.Sink`."""
