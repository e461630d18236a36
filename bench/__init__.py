"""Benchmarks that compare dfagent with the practical limit and the alternatives, side by side."""
