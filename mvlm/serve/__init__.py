"""Serving: the interactive chat CLI and the inference path it shares with the benchmark runners."""
