"""Log collectors: file tails and syslog receivers, emitting ``fleetwatch.record.LogLine``."""
