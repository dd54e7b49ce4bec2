"""The Bytewax dataflow: its operators (``windows``, ``health``), sinks (``sinks/``) and wiring
(``pipeline``)."""
