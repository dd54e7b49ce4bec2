"""Sources of data: one package per collector (``mqtt/``, later ``logs/``)."""
