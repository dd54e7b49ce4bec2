"""Streaming alerts: validated rule models (``rules``) and the Bytewax state machine evaluating them (``engine``)."""
