"""fleetwatch's Grafana dashboards: generated as code (``generate``), run against the real stores the way
Grafana would run them (``queries``), and drawn to PNG where Grafana is not running (``snapshot``)."""
