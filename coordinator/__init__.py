"""The medfl coordinator daemon: enrollment, job and round state, aggregation."""
