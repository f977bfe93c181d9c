"""bench/retrain_step.py on a real exported child: both optimizers timed by part, and the page."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import common  # noqa: E402
import retrain_step  # noqa: E402

ARCH = Path(__file__).resolve().parents[1] / "bench" / "results" / "search" / "SST-2-default-budget6.4M" / \
    "architecture.json"


def test_both_optimizers_are_timed_by_part_and_train_the_same_child(tmp_path, monkeypatch):
    monkeypatch.setattr(retrain_step, "results_dir", lambda benchmark, name: common.results_dir(
        benchmark, name, root=tmp_path))
    argv = ["--arch", str(ARCH), "--batch-size", "8", "--seq-len", "12", "--steps", "3", "--threads", "1",
            "--name", "tiny"]
    assert retrain_step.main(argv) == 0
    result = json.loads((tmp_path / "retrain-step" / "tiny" / "result.json").read_text())
    assert set(result["ms_per_part"]) == set(retrain_step.OPTIMIZERS)
    for name, parts in result["ms_per_part"].items():
        assert set(parts) == set(retrain_step.PARTS) and all(ms > 0 for ms in parts.values())
    plain, fused = result["ms_per_step"].values()
    assert result["speedup_fused"] == plain / fused
    assert result["params"] == json.loads(ARCH.read_text())["params"]
    # The same steps on the same batch and masks: the first step differs by rounding only.
    assert result["max_weight_difference"]["first step"] < 1e-5
    page = (tmp_path / "retrain-step" / "tiny" / "result.md").read_text()
    assert f"{result['speedup_fused']:.2f}x the speed" in page and "| AdamW, fused |" in page
