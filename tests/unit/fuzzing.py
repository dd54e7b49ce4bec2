"""The settings every property-based test runs with. FLEETWATCH_FUZZ_EXAMPLES sets the number of examples of
each property: a few hundred by default (CI), 10,000 in `make fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("FLEETWATCH_FUZZ_EXAMPLES", "300"))
# No example database: nothing is written into the checkout; a failure prints the example to reproduce it.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
