"""How much a source partition may read in one ``next_batch`` call, given how long it was not called.

Bytewax 0.21 calls a partition only while the dataflow has finished the partition's previous epoch
(``partitioned_input``: "wait until all outputs have finished the previous epoch"). With several inputs in
one dataflow (MQTT, log files, syslog), an input whose epoch is ahead of another's waits until the other
advances. The inputs' epochs drift apart, because each starts its next epoch when it is next called after
the interval has passed. Once one input is a whole epoch ahead, it is called once per epoch and advances at
once each time, and stays in that rhythm. Measured in a soak (5,000 readings/s at QoS 1, 6,000 log lines/s):
after about 30 s the MQTT input was called once a second, read its 4,096-message limit, and fell behind at
4,096 readings/s.

A partition that was not called for a while therefore reads in proportion to the gap: ``base`` per
``BASE_GAP_S``, up to ``ceiling``. While it is called often (the normal case) a call reads at most
``base``, so one call never holds the worker long; after a wait it takes what built up meanwhile.
"""

from __future__ import annotations

import math

# The gap one base-sized batch stands for. Busy partitions are called every few milliseconds.
BASE_GAP_S = 0.1


def batch_limit(base: int, ceiling: int, gap_s: float) -> int:
    """The most a call may read after ``gap_s`` seconds without a call: ``base``, times the gaps of
    ``BASE_GAP_S`` that passed, at most ``ceiling``."""
    if gap_s <= BASE_GAP_S:
        return base
    return min(ceiling, base * math.ceil(gap_s / BASE_GAP_S))
