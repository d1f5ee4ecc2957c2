"""The contract kit's self-test: reference plugins, planted bugs and the mutation harness."""
