"""Sinks: one module per store."""
