"""Reference plugins of each kind, written as a third party would, for the mutation harness."""
