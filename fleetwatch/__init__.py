"""fleetwatch: IoT readings and service logs through a Bytewax dataflow into InfluxDB and Elasticsearch."""

__version__ = "0.1.0"
