"""Evaluation: benchmark runners (answers jsonl) and scorers that reproduce the official metrics."""
