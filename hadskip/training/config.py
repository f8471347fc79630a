"""Training settings, each defined once: the loss weights, the distillation mode (`KdMode`, with the weights it
implies), plain fine-tuning (`TrainConfig`, stage I) and HadSkip's three stages (`HadSkipConfig`).

A leaf module: it imports nothing of hadskip but hadskip.errors (bad settings are one-line HadSkipErrors), and no
torch, so the settings can be read and checked anywhere.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace

from hadskip.errors import HadSkipError, check_finite


@dataclass
class LossWeights:
    """Weights of the loss parts (hadskip.training.losses; its docstring says why beta is 20)."""

    task: float = 1.0
    kd_logits: float = 1.0  # a1
    kd_hidden: float = 1.0  # a2
    kd_attention: float = 1.0  # a3
    kd_embedding: float = 1.0  # a4
    budget: float = 20.0  # beta
    temperature: float = 1.0  # for the logits KL

    def __post_init__(self) -> None:
        for name, v in vars(self).items():  # --beta is the budget weight
            check_finite("--beta" if name == "budget" else f"loss weight {name}", v, low=0,
                         low_open=name == "temperature")


class KdMode(str, enum.Enum):
    """What a student distils from the teacher: everything (logits, hidden states, attentions, embeddings), the
    logits only (prediction-KD), or nothing. The one place the `--kd` choices are checked and mapped to weights."""

    FULL = "full"
    LOGITS = "logits"
    NONE = "none"

    @classmethod
    def parse(cls, value: str | KdMode, flag: str = "--kd") -> KdMode:
        try:
            return cls(value)
        except ValueError:
            names = [m.value for m in cls]
            raise HadSkipError(f"{flag} must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}") from None

    def weights(self, base: LossWeights | None = None) -> LossWeights:
        """`base` (default LossWeights()) with the distillation terms this mode leaves out set to 0."""
        w = replace(base) if base is not None else LossWeights()
        if self is not KdMode.FULL:
            w.kd_hidden = w.kd_attention = w.kd_embedding = 0.0
        if self is KdMode.NONE:
            w.kd_logits = 0.0
        return w


@dataclass
class TrainConfig:
    """Plain fine-tuning (stage I)."""

    backbone: str = "minilm-l6"  # offline alias, local folder or hub name
    task: str = "rotten-tomatoes"  # registry name (glue/sst2, ...) or a folder of train/dev/test files
    out: str = "runs/finetune"
    max_len: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    epochs: float = 3.0
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of steps
    seed: int = 0
    max_examples: int | None = None  # cap every split (quick runs, tests)
    eval_batch_size: int = 64
    text_col: str | None = None
    pair_col: str | None = None
    label_col: str | None = None
    metric: str | None = None
    progress: bool = True
    force: bool = False  # replace a finished run at `out` (its hadskip files only; see checkpoint.claim_run_dir)

    def __post_init__(self) -> None:
        if self.max_len < 8 or self.batch_size < 1:
            raise HadSkipError("need max_len >= 8, batch_size >= 1")
        check_finite("--lr", self.lr, low=0, low_open=True)
        check_finite("--epochs", self.epochs, low=0, low_open=True)
        check_finite("weight_decay", self.weight_decay, low=0)
        check_finite("warmup", self.warmup, low=0)
        if self.warmup >= 1:
            raise HadSkipError(f"warmup is a fraction of the steps, below 1; got {self.warmup:g}")


@dataclass
class HadSkipConfig(TrainConfig):
    """All three stages. Ablations of the paper's Table 2: gate_init=False (no stage II),
    homotopy=False (stage III at K only), kd="none" | "logits" (no KD / prediction-KD only)."""

    out: str = "runs/hadskip"
    budget: float = 3.0  # K layers of L on average
    teacher: str | None = None  # a finished `hadskip finetune` run to reuse as stage I
    stage2_epochs: float = 0.5
    phase_epochs: float = 1.0  # per homotopic phase of stage III before the last
    final_phase_epochs: float = 2.0  # the last phase (k = K)
    gate_lr: float = 1e-3
    estimator: str = "reinmax"  # "reinmax" | "ste"
    tau: float = 1.0
    gate_hidden: int = 64
    gate_init: bool = True
    homotopy: bool = True
    homotopy_start: float | None = None  # first k of stage III (default L); every variant keeps the same total
    stage2_kd: bool = False  # stage II also distils from the teacher (the backbone stays frozen)
    hard_tail: float = 0.0  # share of the last phase trained on the gates' own decisions (gates frozen)
    kd: str = "full"  # a KdMode value: "full" | "logits" | "none"
    weights: LossWeights = field(default_factory=LossWeights)
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("--budget", self.budget, low=0, low_open=True)
        check_finite("--stage2-epochs", self.stage2_epochs, low=0)
        check_finite("--phase-epochs", self.phase_epochs, low=0)
        check_finite("--final-phase-epochs", self.final_phase_epochs, low=0, low_open=True)
        check_finite("--gate-lr", self.gate_lr, low=0, low_open=True)
        check_finite("--tau", self.tau, low=0, low_open=True)
        check_finite("--hard-tail", self.hard_tail)
        if self.homotopy_start is not None:
            check_finite("--homotopy-start", self.homotopy_start)
        KdMode.parse(self.kd)
        if self.estimator not in ("reinmax", "ste"):
            raise HadSkipError(f"--estimator must be reinmax or ste, got {self.estimator!r}")
        if not 0.0 <= self.hard_tail < 1.0:
            raise HadSkipError(f"--hard-tail must be in [0, 1), got {self.hard_tail}")
        if self.homotopy_start is not None and self.homotopy_start < self.budget:
            raise HadSkipError(f"--homotopy-start {self.homotopy_start:g} is below the budget {self.budget:g}")

    def loss_weights(self) -> LossWeights:
        return KdMode(self.kd).weights(LossWeights(**asdict(self.weights)))
