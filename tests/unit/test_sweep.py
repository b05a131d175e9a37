"""A sweep's pure rules: its trials, their status rows, the experiment's phase they imply,
and the training history a resumed attempt trims."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tempotrain_operator.mapping import coordinator_input, first_status, sweep_phase, trial_patch
from tempotrain_workers import history
from tempotrain_workers.api import (
    MAX_TRIALS,
    BertExperimentSpec,
    Objective,
    Phase,
    StatusTarget,
    StatusUpdate,
    SweepSpec,
    better,
    expand,
    median_stop,
    trial_run_id,
)


def spec(**sweep: Any) -> BertExperimentSpec:
    return BertExperimentSpec.model_validate(
        {"model": {"name": "models/tiny"}, "training": {"learningRate": 2e-5}, "sweep": sweep}
    )


def test_trials_are_the_grid_product_then_the_list_in_a_fixed_order() -> None:
    sweep = SweepSpec.model_validate(
        {"grid": {"learningRate": [1e-5, 3e-5], "batchSize": [8, 16]}, "trials": [{"seed": 7}]}
    )
    trials = [t.wire() for t in expand(sweep)]
    assert trials == [
        {"learningRate": 1e-5, "batchSize": 8},
        {"learningRate": 1e-5, "batchSize": 16},
        {"learningRate": 3e-5, "batchSize": 8},
        {"learningRate": 3e-5, "batchSize": 16},
        {"seed": 7},
    ]


def test_each_trial_is_a_config_of_its_own_over_the_spec() -> None:
    request = coordinator_input(
        "exp", "ns", "uid-1234", spec(grid={"learningRate": [1e-4]}, trials=[{"seed": 3}]),
        "op", "train", "eval",
    )  # fmt: skip
    first, second = request.configs
    assert (first.trial, first.fine_tune.run_id) == ("t00", "exp-t00")
    assert first.fine_tune.learning_rate == 1e-4 and first.fine_tune.seed == 42
    assert second.fine_tune.learning_rate == 2e-5 and second.fine_tune.seed == 3
    assert request.sweep is not None and request.sweep.max_parallel == 1


def test_a_plain_experiment_is_one_config_and_no_sweep() -> None:
    plain = BertExperimentSpec.model_validate({"model": {"name": "models/tiny"}})
    request = coordinator_input("exp", "ns", "uid", plain, "op", "train", "eval")
    assert request.sweep is None and [c.trial for c in request.configs] == [None]
    assert first_status("exp", plain, "exp-runs") == {
        "runsClaim": "exp-runs",
        "historyFile": "exp/history.jsonl",
    }


def test_trial_run_ids_stay_dns_labels() -> None:
    run_id = trial_run_id("a" * 63, 12)
    assert len(run_id) <= 63 and run_id.endswith("-t12")


def test_too_many_trials_are_refused_by_the_model_too() -> None:
    grid = {"seed": list(range(16)), "batchSize": [1, 2, 3, 4, 5]}
    with pytest.raises(ValueError, match=f"more than {MAX_TRIALS}"):
        expand(SweepSpec.model_validate({"grid": grid}))
    with pytest.raises(ValidationError):
        SweepSpec.model_validate({"grid": {"learningRate": [1e-5]}, "objective": "f1"})


def test_better_follows_the_objective() -> None:
    assert better(Objective.EVAL_ACCURACY, 0.9, 0.8) and not better(Objective.EVAL_LOSS, 0.9, 0.8)
    assert better(Objective.EVAL_LOSS, 0.1, None)


def _update(trial: str, **fields: Any) -> StatusUpdate:
    target = StatusTarget(kind="BertExperiment", namespace="ns", name="exp", uid="u", trial=trial)
    return StatusUpdate(target=target, at=datetime(2026, 1, 1, tzinfo=UTC), **fields)


def test_a_trial_update_patches_its_row_and_the_phase_it_implies() -> None:
    status = first_status("exp", spec(grid={"seed": [1, 2]}), "exp-runs") | {"phase": "Pending"}
    patch = trial_patch(_update("t01", phase=Phase.TRAINING), status)
    assert patch == {"trialRuns": {"t01": {"phase": "Training"}}, "phase": "Training"}


def test_the_experiment_is_suspended_only_once_every_active_trial_is() -> None:
    rows = {
        "t00": {"phase": "Suspended"},
        "t01": {"phase": "Training"},
        "t02": {"phase": "Pending"},
    }
    assert sweep_phase(rows, "Training", suspend_wanted=True) is None
    rows["t01"]["phase"] = "Suspended"
    assert sweep_phase(rows, "Training", suspend_wanted=True) == Phase.SUSPENDED
    # Resumed (the operator set Pending): the first trial back in training says Training.
    rows["t00"]["phase"] = "Training"
    assert sweep_phase(rows, "Pending", suspend_wanted=False) == Phase.TRAINING


def test_a_resumed_trial_row_leaves_suspended() -> None:
    status = {"phase": "Pending", "trialRuns": {"t00": {"phase": "Suspended"}}}
    patch = trial_patch(_update("t00", phase=Phase.TRAINING), status)
    assert patch["trialRuns"]["t00"]["phase"] == "Training"


def test_a_resumed_attempt_trims_the_history_past_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run" / history.HISTORY_FILE
    for step in (10, 20, 30):
        history.append(path, {"step": step, "loss": 1.0 / step})
    with path.open("a") as torn:
        torn.write('{"step": 40, "lo')  # a crash mid-write
    history.trim(path, 20)
    assert [r.step for r in history.read(path)] == [10, 20]
    history.trim(path, None)  # started over: nothing of before is kept
    assert history.read(path) == []


def test_the_median_rule_stops_a_trial_worse_than_the_others_running_averages() -> None:
    evaluations = {
        "t00": {10: 0.60, 20: 0.70, 30: 0.80},  # running average up to 30: 0.70
        "t01": {10: 0.62, 20: 0.72, 30: 0.82},  # 0.72
        "t02": {10: 0.50, 20: 0.52, 30: 0.55},  # best 0.55 < median 0.71
    }
    why = median_stop(Objective.EVAL_ACCURACY, "t02", evaluations, 3, 2)
    assert why is not None and "0.55" in why and "0.71" in why
    assert median_stop(Objective.EVAL_ACCURACY, "t00", evaluations, 3, 2) is None
    # Too few evaluations of its own, or too few others to compare with: no verdict.
    assert median_stop(Objective.EVAL_ACCURACY, "t02", evaluations, 4, 2) is None
    assert median_stop(Objective.EVAL_ACCURACY, "t02", evaluations, 3, 3) is None


def test_the_median_rule_compares_only_what_the_others_had_by_that_step() -> None:
    # t01 only got good later: up to step 20 its average is poor.
    evaluations = {
        "t00": {10: 2.0, 20: 1.5},
        "t01": {10: 2.2, 20: 2.1, 40: 0.1},
        "t02": {10: 1.9, 20: 1.8},
    }
    assert median_stop(Objective.EVAL_LOSS, "t02", evaluations, 2, 2) is None  # 1.8 < 1.93
    evaluations["t02"] = {10: 2.5, 20: 2.4}
    assert median_stop(Objective.EVAL_LOSS, "t02", evaluations, 2, 2) is not None
