"""What `hadskip compare` compares: the methods and its settings (CompareConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hadskip.errors import HadSkipError
from hadskip.training.config import KdMode

METHODS = ("full", "budgeted-exit", "cascade", "early-exit", "patience-exit", "hadskip", "hadskip-dial")
BASELINES = ("budgeted-exit", "cascade", "early-exit", "patience-exit")
# HadSkip variants compare can train beside the paper's method: name -> the HadSkipConfig settings that make it
# ("skip-exit": exit heads trained with the gates, scored by the skip + exit rule: hadskip/evaluation/skip_exit.py)
VARIANTS = {"per-layer": {"gate_penalty": "per-layer"}, "attn-gate": {"gate_pool": "attention"},
            "per-layer-attn": {"gate_penalty": "per-layer", "gate_pool": "attention"},
            "skip-exit": {"exit_heads": True, "exit_pool": "mean"}}


@dataclass
class CompareConfig:
    task: str | None = None  # default: the teacher's task, else rotten-tomatoes
    budgets: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    out: str = "runs/compare"
    backbone: str = "minilm-l6"
    teacher: str | None = None  # a finished finetune run (trained into OUT/full when missing)
    hadskip_runs: dict[float, str] = field(default_factory=dict)  # K -> run dir (trained into OUT when missing)
    dial_from: str | None = None  # the run whose dial gives the hadskip-dial rows
    max_len: int = 64
    epochs: float = 3.0  # the teacher's epochs, when trained here
    hadskip_options: dict = field(default_factory=dict)  # HadSkipConfig fields for runs trained here
    baseline_epochs: float | None = None  # default: the compared HadSkip run's stage III epochs
    kd: str = "full"  # distillation of every method trained here (and of every --hadskip run): full, logits, none
    variants: list[str] = field(default_factory=list)  # VARIANTS trained beside HadSkip, rows "hadskip-NAME"
    seeds: list[int] = field(default_factory=lambda: [0])  # more than one: OUT/seed-S per seed, then the statistics
    train_examples: int | None = None  # every method trains on this fixed subset of the training split
    oracle: bool = False  # train an any-subset backbone: rows best-subset and oracle (baselines/anysubset.py)
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.budgets:
            raise HadSkipError("give at least one budget, e.g. --budgets 2,3,4")
        if any(not b > 0 for b in self.budgets):  # NaN too
            raise HadSkipError(f"budgets must be > 0, got {self.budgets}")
        self.budgets = sorted(set(float(b) for b in self.budgets))
        self.hadskip_runs = {float(k): str(v) for k, v in self.hadskip_runs.items()}
        extra = sorted(set(self.hadskip_runs) - set(self.budgets))
        if extra:
            raise HadSkipError(f"--hadskip given for budget(s) {extra} that are not in --budgets {self.budgets}")
        KdMode.parse(self.kd)
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise HadSkipError(f"unknown --variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise HadSkipError(f"--seeds needs distinct seeds >= 0, got {self.seeds}")
        if len(self.seeds) > 1 and (self.hadskip_runs or self.dial_from):
            raise HadSkipError("--hadskip and --dial-from name one seed's runs: give them without --seeds")
        if self.train_examples is not None and self.train_examples < 1:
            raise HadSkipError(f"--train-examples must be at least 1, got {self.train_examples}")
        if self.baseline_epochs is not None and not self.baseline_epochs > 0:
            raise HadSkipError(f"--baseline-epochs must be > 0, got {self.baseline_epochs}")
