"""bench/train_speed.py runs end to end and checks what it must: the same samples padded and packed, and packed
losses equal to padded ones. Its speed figures are not asserted here (they come from the benchmark itself)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_speed_runs_every_variant_against_transformers_llava(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "train_speed.py"), "--steps", "2", "--warmup", "0",
         "--batch-size", "4", "--no-memory", "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    assert set(measured["variants"]) == {"transformers-llava-padded", "mvlm-padded", "mvlm-padded-full-loss",
                                         "mvlm-packed", "mvlm-packed-full-loss"}
    assert measured["variants"]["transformers-llava-padded"]["tokens_per_s_ratio"] == 1.0
    assert all(row["tokens_per_s"] > 0 for row in measured["variants"].values())
    assert len(measured["loss_checks"]) == 2 and max(measured["loss_checks"].values()) < 1e-4
    assert measured["initial_loss_difference_vs_baseline"] < 1e-4  # the same weights as transformers' LLaVA
    assert "mvlm-packed" in result.stdout and "transformers-llava-padded" in result.stdout


def test_serve_speed_quick_compares_batched_and_one_at_a_time_serving(tmp_path):
    """bench/serve_speed.py --quick: both servers answer every level, batching happens only where allowed, and
    greedy answers do not depend on it. Its speed figures are not asserted (they come from the benchmark)."""
    out = tmp_path / "serve.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "serve_speed.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    assert [row["clients"] for row in measured["rows"]] == [1, 4, 8]
    for row in measured["rows"]:
        assert row["one_at_a_time_tokens_per_s"] > 0 and row["batched_tokens_per_s"] > 0
        assert row["one_at_a_time_mean_batch_size"] == 1
    assert measured["rows"][-1]["batched_mean_batch_size"] > 1
    assert measured["answers_compared"] > 0 and measured["answers_identical"] == measured["answers_compared"]
    assert "at 8 clients: batched gives" in result.stdout
