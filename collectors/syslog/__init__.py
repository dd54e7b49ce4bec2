"""Syslog receiver (RFC 5424/3164 over UDP and TCP) as a Bytewax source."""
