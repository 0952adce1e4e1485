"""Test helpers: tiny checkpoints, synthetic data and foreign checkpoint layouts, imported as tests.helpers.*."""
