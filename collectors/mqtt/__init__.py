"""MQTT collector: the Bytewax source, PUBLISH frame parsing, payload decoders and topic templates."""
