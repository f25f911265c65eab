"""result.json: a finished stage's outputs are found again after its run folder is moved or copied."""

from __future__ import annotations

import json
import shutil

from align.stages import StageResult


def _finished_stage(run_dir, name="rank"):
    stage_dir = run_dir / name
    stage_dir.mkdir(parents=True)
    (stage_dir / "rankings.jsonl").write_text("{}\n")
    (stage_dir / "model").mkdir()
    result = StageResult({"rankings": str(stage_dir / "rankings.jsonl"), "model": str(stage_dir / "model"),
                          "elsewhere": "/data/shared/prompts.jsonl"}, {"n": 1})
    (stage_dir / "result.json").write_text(result.to_json(stage_dir))
    return stage_dir


def test_outputs_follow_a_copied_run_folder(tmp_path):
    _finished_stage(tmp_path / "run-a")
    shutil.copytree(tmp_path / "run-a", tmp_path / "run-b")
    shutil.rmtree(tmp_path / "run-a")
    result = StageResult.from_file(tmp_path / "run-b" / "rank" / "result.json")
    assert result.outputs["rankings"] == str(tmp_path / "run-b" / "rank" / "rankings.jsonl")
    assert result.outputs["model"] == str(tmp_path / "run-b" / "rank" / "model")
    assert result.outputs["elsewhere"] == "/data/shared/prompts.jsonl"  # outside the stage folder: as written
    assert result.metrics == {"n": 1}


def test_outputs_stay_put_when_the_run_was_not_moved(tmp_path):
    stage_dir = _finished_stage(tmp_path / "run-a")
    result = StageResult.from_file(stage_dir / "result.json")
    assert result.outputs["rankings"] == str(stage_dir / "rankings.jsonl")


def test_results_written_without_their_folder_are_found_by_the_stage_name(tmp_path):
    stage_dir = _finished_stage(tmp_path / "run-b")
    data = json.loads((stage_dir / "result.json").read_text())
    data.pop("stage_dir")
    data["outputs"]["rankings"] = "runs/old-name/rank/rankings.jsonl"  # relative to where it once ran
    data["outputs"]["missing"] = "runs/old-name/rank/gone.jsonl"
    (stage_dir / "result.json").write_text(json.dumps(data))
    result = StageResult.from_file(stage_dir / "result.json")
    assert result.outputs["rankings"] == str(stage_dir / "rankings.jsonl")
    assert result.outputs["missing"] == "runs/old-name/rank/gone.jsonl"  # nothing there: left for the error
