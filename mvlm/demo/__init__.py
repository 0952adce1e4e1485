"""The end-to-end demo (`python -m mvlm.demo`, `bash scripts/demo.sh`): a tiny model trained from scratch
on a synthetic task, through the same scripts and tools a user runs."""
