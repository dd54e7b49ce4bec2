"""Logs benchmark: file to searchable in Elasticsearch, for fleetwatch and its references (raw bulk, rsyslog)."""
