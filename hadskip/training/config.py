"""Training settings, each defined once: the loss weights, the distillation mode (`KdMode`, with the weights it
implies), the optimiser (`OptimConfig`, shared with the baselines), plain fine-tuning (`TrainConfig`, stage I) and
HadSkip's three stages (`HadSkipConfig`). Each field carries its help text in its metadata: the CLI options of
`hadskip finetune` and `hadskip train` are generated from these classes (cli/options.py).

A leaf module: it imports nothing of hadskip but hadskip.errors (bad settings are one-line HadSkipErrors), and no
torch, so the settings can be read and checked anywhere.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace

from hadskip.errors import HadSkipError, check_finite

GATE_PENALTIES = ("mean", "per-layer")  # hadskip.training.losses.budget_penalty's rules


@dataclass
class LossWeights:
    """Weights of the loss parts (hadskip.training.losses; its docstring says why beta is 20)."""

    task: float = 1.0
    kd_logits: float = 1.0  # a1
    kd_hidden: float = 1.0  # a2
    kd_attention: float = 1.0  # a3
    kd_embedding: float = 1.0  # a4
    budget: float = field(default=20.0, metadata={"help": "Weight of the budget penalty (beta).", "flag": "--beta"})
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


def _opt(default, help: str, **kw):
    """A setting with its default and its help text (the CLI builds its options from these, cli/options.py);
    `flag` in `kw` names the CLI flag where it is not --the-field-name (a True default is then switched off)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(kw_only=True)
class OptimConfig:
    """The optimiser settings HadSkip's stages and the baselines share: AdamW at `lr` with linear warmup and
    decay (hadskip.training.loop), `batch_size` rows a step, and the seed of the run."""

    lr: float = _opt(5e-5, "Peak learning rate of the pretrained weights (linear warmup, then linear decay).")
    batch_size: int = _opt(32, "Training batch size.")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    warmup: float = _opt(0.06, "Warmup steps, as a fraction of all steps (below 1).")
    seed: int = _opt(0, "Random seed.")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HadSkipError(f"need batch_size >= 1, got {self.batch_size}")
        check_finite("--lr", self.lr, low=0, low_open=True)
        check_finite("weight_decay", self.weight_decay, low=0)
        check_finite("warmup", self.warmup, low=0)
        if self.warmup >= 1:
            raise HadSkipError(f"warmup is a fraction of the steps, below 1; got {self.warmup:g}")

    @classmethod
    def settings_in(cls, config: dict) -> dict:
        """The optimiser settings recorded in `config` (a run's run.json extra["config"], flat as asdict gives it)."""
        return {f.name: config[f.name] for f in fields(cls) if f.name in config}


@dataclass(kw_only=True)
class TrainConfig(OptimConfig):
    """Plain fine-tuning (stage I)."""

    backbone: str = _opt("minilm-l6", "minilm-l6 (offline), a local model folder, or a hub name.")
    task: str = _opt("rotten-tomatoes", "rotten-tomatoes (offline), glue/<name>, or a folder of train/dev/test files.")
    out: str = _opt("runs/finetune", "Run dir to write.")
    max_len: int = _opt(64, "Truncate inputs to this many tokens.")
    epochs: float = _opt(3.0, "Fine-tuning epochs (fractions allowed); for `hadskip train`, stage I's when there is "
                              "no --teacher.")
    max_examples: int | None = _opt(None, "Cap every split (quick runs).")
    train_examples: int | None = _opt(None, "Train on a fixed random subset of this many examples (the same "
                                            "for every --seed); dev and test stay whole.")
    eval_batch_size: int = _opt(64, "Batch size of the dev/test evaluations.")
    text_col: str | None = _opt(None, "Text column of a folder task (default: text).")
    pair_col: str | None = _opt(None, "Second-text column of a folder task (default: text_pair).")
    label_col: str | None = _opt(None, "Label column of a folder task (default: label).")
    metric: str | None = _opt(None, "Override the task metric: accuracy, f1 or mcc.")
    progress: bool = _opt(True, "No progress bars or per-phase lines.", flag="--quiet")
    force: bool = _opt(False, "Replace a run already at --out (only the files hadskip wrote there are removed; "
                              "see checkpoint.claim_run_dir).")

    def __post_init__(self) -> None:
        if self.max_len < 8 or self.batch_size < 1:
            raise HadSkipError("need max_len >= 8, batch_size >= 1")
        super().__post_init__()
        check_finite("--epochs", self.epochs, low=0, low_open=True)
        for name in ("max_examples", "train_examples"):
            n = getattr(self, name)
            if n is not None and n < 1:
                raise HadSkipError(f"--{name.replace('_', '-')} must be at least 1, got {n}")


@dataclass(kw_only=True)
class HadSkipConfig(TrainConfig):
    """All three stages. Ablations of the paper's Table 2: gate_init=False (no stage II),
    homotopy=False (stage III at K only), kd="none" | "logits" (no KD / prediction-KD only)."""

    out: str = _opt("runs/hadskip", "Run dir to write (stages are kept under OUT/stages/).")
    task: str | None = _opt(None, "Task (default: the --teacher's task, else rotten-tomatoes); a registry name "
                                  "(rotten-tomatoes, glue/<name>) or a folder of train/dev/test files.")
    budget: float = _opt(3.0, "Average layers to run, K of L (fractions allowed).")
    teacher: str | None = _opt(None, "Stage I: a finished `hadskip finetune` run, or a fine-tuned transformers "
                                        "sequence classifier (folder or hub name; needs --task), kept as it is.")
    stage2_epochs: float = _opt(0.5, "Stage II (gate initialisation) epochs.")
    phase_epochs: float = _opt(1.0, "Epochs per homotopic phase of stage III (before the last).")
    final_phase_epochs: float = _opt(2.0, "Epochs of the last phase (k = K).")
    gate_lr: float = _opt(1e-3, "Gate learning rate.")
    estimator: str = _opt("reinmax", "Gate gradient estimator: reinmax or ste.")
    tau: float = _opt(1.0, "ReinMax temperature.")
    gate_hidden: int = _opt(64, "Hidden width of each gate's MLP.")
    gate_pool: str = _opt("mean", "What a gate reads: mean (the masked mean of the tokens) or attention (that and "
                                  "an attention-pooled summary: a richer, input-dependent gate input).")
    gate_init: bool = _opt(True, "Ablation: skip stage II.", flag="--no-gate-init")
    homotopy: bool = _opt(True, "Ablation: stage III at K only.", flag="--no-homotopy")
    homotopy_start: float | None = _opt(None, "First k of stage III's homotopy (default: L). Total stage III epochs "
                                              "stay the same.")
    stage2_kd: bool = _opt(False, "Distil from the teacher in stage II too (the backbone stays frozen).")
    hard_tail: float = _opt(0.0, "Share of the last phase trained on the gates' own (inference) decisions, gates "
                                 "frozen.")
    kd: str = _opt("full", "Distillation: full, logits (prediction-KD only) or none.")  # a KdMode value
    gate_penalty: str = _opt("mean", "Budget penalty: mean (the paper's: the mean gate, met by any fixed subset) "
                                     "or per-layer (every layer runs for a share K/L of each batch's rows, so "
                                     "routes must depend on the input).")
    exit_heads: bool = _opt(False, "Skip + exit: also train exit heads after layers 1..L-1 with the gates (stage "
                                   "III); `hadskip compare --variants skip-exit` scores the route (export: not yet).")
    exit_pool: str | None = _opt(None, "With --exit-heads: what the exit heads read, mean (of the tokens; the "
                                       "default) or first (token).")
    weights: LossWeights = field(default_factory=LossWeights)
    resume: bool = _opt(False, "Continue after the last finished stage/phase.")

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
        if self.exit_pool not in (None, "first", "mean"):  # hadskip.modeling.units.EXIT_POOLS
            raise HadSkipError(f"--exit-pool must be mean or first, got {self.exit_pool!r}")
        if self.gate_pool not in ("mean", "attention"):  # hadskip.modeling.units.GATE_POOLS
            raise HadSkipError(f"--gate-pool must be mean or attention, got {self.gate_pool!r}")
        if self.gate_penalty not in GATE_PENALTIES:
            raise HadSkipError(f"--gate-penalty must be one of {', '.join(GATE_PENALTIES)}, got {self.gate_penalty!r}")
        if self.estimator not in ("reinmax", "ste"):
            raise HadSkipError(f"--estimator must be reinmax or ste, got {self.estimator!r}")
        if not 0.0 <= self.hard_tail < 1.0:
            raise HadSkipError(f"--hard-tail must be in [0, 1), got {self.hard_tail}")
        if self.homotopy_start is not None and self.homotopy_start < self.budget:
            raise HadSkipError(f"--homotopy-start {self.homotopy_start:g} is below the budget {self.budget:g}")

    def loss_weights(self) -> LossWeights:
        return KdMode(self.kd).weights(LossWeights(**asdict(self.weights)))
