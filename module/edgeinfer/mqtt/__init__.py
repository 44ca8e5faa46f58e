"""MQTT transport: the paho connection, ordered acknowledgements and topic templates."""
