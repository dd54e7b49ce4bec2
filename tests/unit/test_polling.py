"""A partition that Bytewax did not call for a while reads what built up meanwhile (collectors.polling)."""

from __future__ import annotations

from collectors.polling import BASE_GAP_S, batch_limit


def test_a_partition_called_often_reads_at_most_its_base_batch() -> None:
    assert batch_limit(4096, 65_536, 0.0) == 4096
    assert batch_limit(4096, 65_536, BASE_GAP_S) == 4096


def test_after_a_wait_it_reads_a_base_batch_per_base_gap_up_to_the_ceiling() -> None:
    # Called once per 1 s epoch: ten base batches, enough for 40,000 messages a second.
    assert batch_limit(4096, 65_536, 1.0) == 40_960
    assert batch_limit(4096, 65_536, 1.05) == 45_056
    assert batch_limit(4096, 65_536, 30.0) == 65_536
