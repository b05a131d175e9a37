"""`BertExperiment.spec.sweep`: several trainings from one resource, and the pure rules that
turn it into trials and pick the best.

A trial is one training and evaluation pair with its own run id (so its own checkpoints and
verified resume). Trials are the grid's cartesian product first, in the order the grid's
fields are declared, then the `trials` list: the same spec always gives the same trials with
the same names, which is what lets a re-applied sweep resume each one from its checkpoint.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints

from tempotrain_workers.api.base import (
    CEL,
    MODEL_NAME_MAX,
    RELATIVE_PATH_PATTERN,
    WireModel,
    cel,
    model_name_field,
)

MAX_TRIALS = 64  # the coordinator's configs; also keeps `.status.trialRuns` a few tens of KB
MAX_VALUES = 16  # per parameter of a grid
MAX_PARALLEL = 16


class Objective(StrEnum):
    """What ranks trials: evaluation accuracy (higher is better) or loss (lower)."""

    EVAL_ACCURACY = "evalAccuracy"
    EVAL_LOSS = "evalLoss"

    @property
    def maximize(self) -> bool:
        return self is Objective.EVAL_ACCURACY


def _values() -> Any:
    return Field(default=None, min_length=1, max_length=MAX_VALUES)


# One value of each parameter, with the bounds spec.training has for it.
LearningRate = Annotated[float, Field(gt=0, lt=1)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
Epochs = Annotated[float, Field(gt=0, le=100)]
Seed = Annotated[int, Field(ge=0)]
WarmupRatio = Annotated[float, Field(ge=0, lt=1)]
WeightDecay = Annotated[float, Field(ge=0, le=1)]
ModelName = Annotated[
    str, StringConstraints(min_length=1, max_length=MODEL_NAME_MAX, pattern=RELATIVE_PATH_PATTERN)
]


class TrialParameters(WireModel):
    """What a trial changes on top of `spec.training` and `spec.model`; unset: the spec's."""

    learning_rate: LearningRate | None = None
    batch_size: BatchSize | None = None
    epochs: Epochs | None = None
    seed: Seed | None = None
    warmup_ratio: WarmupRatio | None = None
    weight_decay: WeightDecay | None = None
    model: str | None = model_name_field(default=None)


# Grid fields, in the order their product is taken (the first varies slowest).
GRID_FIELDS = tuple(TrialParameters.model_fields)
_ANY_GRID_FIELD = " || ".join(
    f"has(self.{TrialParameters.model_fields[f].alias or f})" for f in GRID_FIELDS
)


class SweepGrid(WireModel):
    """Values per parameter; every combination is a trial."""

    model_config = ConfigDict(
        json_schema_extra={CEL: [cel(_ANY_GRID_FIELD, "a sweep grid needs at least one parameter")]}
    )

    learning_rate: list[LearningRate] | None = _values()
    batch_size: list[BatchSize] | None = _values()
    epochs: list[Epochs] | None = _values()
    seed: list[Seed] | None = _values()
    warmup_ratio: list[WarmupRatio] | None = _values()
    weight_decay: list[WeightDecay] | None = _values()
    model: list[ModelName] | None = _values()


def _grid_size_cel() -> str:
    """The number of trials as CEL: the grid's product plus the list's length."""
    factors = [
        f"(has(self.grid.{alias}) ? size(self.grid.{alias}) : 1)"
        for alias in (TrialParameters.model_fields[f].alias or f for f in GRID_FIELDS)
    ]
    grid = f"(has(self.grid) ? {' * '.join(factors)} : 0)"
    return f"{grid} + (has(self.trials) ? size(self.trials) : 0)"


class EarlyStopping(WireModel):
    """The median stopping rule: a trial whose best objective so far is worse than the median
    of the other trials' running averages (their evaluations up to the same step) is stopped
    — it saves, its worker takes the next trial."""

    eval_steps: int = Field(
        ge=1,
        description="evaluate every this many training steps (each evaluation is also a "
        "point of the trial's eval curve)",
    )
    min_evaluations: int = Field(
        default=3, ge=1, le=1000, description="a trial is judged from its n-th evaluation on"
    )
    min_trials: int = Field(
        default=2,
        ge=1,
        le=MAX_TRIALS,
        description="how many other trials must have evaluated up to that step to judge",
    )


class SweepSpec(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel("has(self.grid) || has(self.trials)", "a sweep needs a grid or trials"),
                cel(
                    f"{_grid_size_cel()} <= {MAX_TRIALS}",
                    f"a sweep may have at most {MAX_TRIALS} trials (grid combinations plus "
                    "the trials list)",
                ),
            ]
        }
    )

    grid: SweepGrid | None = Field(default=None, description="every combination is a trial")
    trials: list[TrialParameters] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TRIALS,
        description="trials given one by one, after the grid's",
    )
    max_parallel: int = Field(
        default=1,
        ge=1,
        le=MAX_PARALLEL,
        description="trials training at once: the training Deployment gets this many pods "
        "(each with spec.resources)",
    )
    objective: Objective = Field(
        default=Objective.EVAL_ACCURACY,
        description="what picks the best trial: evalAccuracy (highest) or evalLoss (lowest)",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None, description="stop weak trials early (the median rule); default: none"
    )
    max_failed_trials: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TRIALS,
        description="the sweep fails once more trials than this have failed (the others are "
        "cancelled); default: only when every trial fails",
    )


def expand(sweep: SweepSpec) -> list[TrialParameters]:
    """The trials, in their fixed order: the grid's product, then the list."""
    trials: list[TrialParameters] = []
    if sweep.grid is not None:
        axes = [
            (name, values)
            for name in GRID_FIELDS
            if (values := getattr(sweep.grid, name)) is not None
        ]
        for combination in itertools.product(*(values for _, values in axes)):
            chosen = {name: value for (name, _), value in zip(axes, combination, strict=True)}
            trials.append(TrialParameters.model_validate(chosen))
    trials.extend(sweep.trials or [])
    if len(trials) > MAX_TRIALS:  # the schema refuses this at apply; an old CRD may not
        raise ValueError(f"spec.sweep has {len(trials)} trials, more than {MAX_TRIALS}")
    return trials


@dataclass(frozen=True)
class Trial:
    index: int
    name: str  # t00, t01, ...
    run_id: str  # <run id>-t00, ...
    parameters: TrialParameters


def trials_of(run_id: str, sweep: SweepSpec) -> list[Trial]:
    """The sweep's trials with their names and run ids, in `expand`'s order."""
    return [
        Trial(index, trial_name(index), trial_run_id(run_id, index), parameters)
        for index, parameters in enumerate(expand(sweep))
    ]


def trial_name(index: int) -> str:
    """`t00`, `t01`, ...: short, sortable, fixed by the trial's place in `expand`."""
    return f"t{index:02d}"


def trial_run_id(run_id: str, index: int) -> str:
    """The trial's run id, a DNS label of at most 63 characters: `<run id>-t03`."""
    return f"{run_id[:59].rstrip('-')}-{trial_name(index)}"


def parameters_shown(parameters: TrialParameters) -> str:
    """`learningRate=3e-05 batchSize=16`: a trial's changes on one line."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in parameters.wire().items())  # fmt: skip


def better(objective: Objective, value: float, than: float | None) -> bool:
    """Whether `value` beats `than` (None: nothing yet) under the objective."""
    if than is None:
        return True
    return value > than if objective.maximize else value < than


def median_stop(
    objective: Objective,
    trial: str,
    evaluations: Mapping[str, Mapping[int, float]],
    min_evaluations: int,
    min_trials: int,
) -> str | None:
    """Why `trial` should stop under the median rule, or None: its best objective so far is
    worse than the median of the other trials' running averages of the objective over their
    evaluations up to its latest step. `evaluations`: per trial, step → objective value."""
    mine = evaluations.get(trial) or {}
    if len(mine) < min_evaluations:
        return None
    step = max(mine)
    best = max(mine.values()) if objective.maximize else min(mine.values())
    averages = []
    for other, values in evaluations.items():
        reached = [value for at, value in values.items() if at <= step]
        if other != trial and reached:
            averages.append(statistics.fmean(reached))
    if len(averages) < min_trials:
        return None
    median = statistics.median(averages)
    if best == median or better(objective, best, median):
        return None
    return (
        f"stopped early: its best {objective.value} {best:.4g} after {len(mine)} evaluations "
        f"is worse than the median {median:.4g} of {len(averages)} other trials' running "
        f"averages up to step {step}"
    )
