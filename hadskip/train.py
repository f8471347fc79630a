"""Training: plain fine-tuning (stage I, the teacher) and HadSkip's stages II and III.

    stage I    fine-tune the backbone + head, gates unused                          -> the teacher
    stage II   backbone frozen, gates only: task loss + budget penalty at s = K/L   (gate initialisation)
    stage III  everything trains: task + KD(logits, hidden, attention, embeddings) + budget penalty,
               homotopic budget k = L, L-1, ..., K (one phase per k, each from the previous phase's weights)

Stage II keeps the budget term at the target s (the paper's stage II has none, and its gates then only learn
to stay open, their initial state, which initialises nothing): the gates learn which layers each input can
spare while the backbone cannot adapt, and stage III's homotopy then starts at k = L.

Every stage and phase is saved as a run dir under OUT/stages/ and recorded in OUT/progress.json;
`resume=True` skips what is recorded, losing at most the phase that was running. Training goes through
`accelerate` (the loop itself is hadskip.loop), so `accelerate launch -m hadskip.cli train ...` runs
data-parallel. One function per stage: `finetune` (I), `_stage2`, `_stage3_phase`; `train_hadskip` chains them.
Not included: mixed precision flags (accelerate's own config applies), gradient accumulation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch

from hadskip import loop
from hadskip.checkpoint import RunInfo, claim_run_dir, load_run, read_info, save_run
from hadskip.errors import HadSkipError, check_finite
from hadskip.evaluate import evaluate
from hadskip.loop import Log, Prepared, adamw, eval_split, num_steps, train_loader
from hadskip.losses import LossWeights, budget_penalty, distillation, task_loss
from hadskip.preflight import check_finetune, check_hadskip


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
    kd: str = "full"  # "full" | "logits" | "none"
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
        if self.kd not in ("full", "logits", "none"):
            raise HadSkipError(f"--kd must be full, logits or none, got {self.kd!r}")
        if self.estimator not in ("reinmax", "ste"):
            raise HadSkipError(f"--estimator must be reinmax or ste, got {self.estimator!r}")
        if not 0.0 <= self.hard_tail < 1.0:
            raise HadSkipError(f"--hard-tail must be in [0, 1), got {self.hard_tail}")
        if self.homotopy_start is not None and self.homotopy_start < self.budget:
            raise HadSkipError(f"--homotopy-start {self.homotopy_start:g} is below the budget {self.budget:g}")

    def loss_weights(self) -> LossWeights:
        w = LossWeights(**asdict(self.weights))
        if self.kd != "full":
            w.kd_hidden = w.kd_attention = w.kd_embedding = 0.0
        if self.kd == "none":
            w.kd_logits = 0.0
        return w


def homotopy_schedule(num_layers: int, budget: float, homotopy: bool = True,
                      start: float | None = None) -> list[float]:
    """k = start, start-1, ..., down to the budget (start defaults to L; fractional budgets end on themselves):
    L=6, K=2.5 -> 6,5,4,3,2.5; start=4, K=2 -> 4,3,2."""
    if budget > num_layers:
        raise HadSkipError(f"budget {budget} is more than the backbone's {num_layers} layers")
    top = float(num_layers if start is None else start)
    if not budget <= top <= num_layers:
        raise HadSkipError(f"the homotopy must start between the budget {budget:g} and {num_layers} layers, "
                           f"got {top:g}")
    if not homotopy:
        return [float(budget)]
    # rounded: 5.9 - 3 is 2.9000000000000004, which would make a phase next to the final k = 2.9
    ks = [round(top - j, 9) for j in range(int(math.floor(top - budget + 1e-9)) + 1)]
    ks = [k for k in ks if k > budget + 1e-9]
    return [*ks, float(budget)]


def phase_epochs(num_layers: int, cfg: HadSkipConfig) -> list[float]:
    """Epochs of each phase of stage III. The total is always that of the full homotopy L, ..., K
    (phase_epochs per phase before the last, final_phase_epochs for k = K), so the ablations (no homotopy, a
    later start) train exactly as long: the earlier phases they do run get phase_epochs each, the last phase
    the rest."""
    full = homotopy_schedule(num_layers, cfg.budget, True)
    total = cfg.phase_epochs * (len(full) - 1) + cfg.final_phase_epochs
    sched = homotopy_schedule(num_layers, cfg.budget, cfg.homotopy, cfg.homotopy_start)
    early = [cfg.phase_epochs] * (len(sched) - 1)
    return [*early, total - sum(early)]


def stage3_epochs(info: RunInfo, num_layers: int) -> float:
    """Total stage III epochs a finished HadSkip run trained: what it recorded (run.json extra.phase_epochs),
    else what its recorded config gives (runs written before phase_epochs was recorded)."""
    if info.extra.get("phase_epochs"):
        return float(sum(info.extra["phase_epochs"]))
    known = {f.name for f in fields(HadSkipConfig)}
    config = {k: v for k, v in info.extra.get("config", {}).items() if k in known and k != "weights"}
    cfg = HadSkipConfig(**{**config, "budget": float(info.budget)})
    if not cfg.homotopy:  # such runs trained final_phase_epochs only at K
        return float(cfg.final_phase_epochs)
    return float(sum(phase_epochs(num_layers, cfg)))


# --------------------------------------------------------------------------------------------- stage I


def _task_step(model, batch) -> dict:
    """Stage I: the task loss of the plain encoder (every layer on every row)."""
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="off")
    return {"task": task_loss(out.logits, batch["labels"])}


def finetune(cfg: TrainConfig, init=None, kind: str = "finetune") -> dict:
    """Fine-tune the plain backbone (or `init`, a (GatedEncoder, tokenizer) pair) with every layer on; keep the
    best dev epoch as the run dir cfg.out, of the given `kind`. Returns its metrics."""
    from hadskip.backbone import build_gated

    check_finetune(cfg, init)  # before the run dir exists
    out = claim_run_dir(cfg.out, force=cfg.force, resumable=False)
    log = Log(out, cfg.progress)
    acc = loop.accelerator(cfg.seed)
    t0 = time.time()
    data = loop.load_data(cfg)
    model, tokenizer = init if init is not None else build_gated(cfg.backbone, num_labels=data.spec.num_labels)
    prep = Prepared(cfg, tokenizer, data)
    for p in model.gate_parameters():
        p.requires_grad_(False)
    opt = adamw([(list(model.backbone_parameters()), cfg.lr)], cfg.weight_decay)
    dl = train_loader(acc, prep, cfg, cfg.seed)
    model, opt = acc.prepare(model, opt)

    # the best epoch is kept in memory and the run dir written once at the end: a run.json on disk always
    # means a finished run (make, compare and --teacher rely on that)
    best, best_state, best_epoch, examples, done = None, None, 0, 0, 0
    epochs = math.ceil(cfg.epochs)
    total = num_steps(len(dl), cfg.epochs)
    for epoch in range(epochs):
        steps = min(len(dl), total - done)
        # one warmup/decay schedule over all epochs, evaluated on dev after each
        parts = loop.run_steps(acc, model, dl, opt, steps, cfg.warmup, partial(_task_step, model),
                               f"{kind} epoch {epoch + 1}/{epochs}", cfg.progress, offset=done, total=total,
                               first_epoch=epoch)
        done += steps
        examples += steps * cfg.batch_size
        dev = eval_split(acc, model, prep.dev, prep, cfg, gates="off")
        log(stage=kind, epoch=epoch + 1, **parts, dev=dev.value, metric=dev.metric)
        if best is None or dev.value > best:
            best, best_epoch = dev.value, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
    acc.wait_for_everyone()
    seconds = time.time() - t0
    final = acc.unwrap_model(model).cpu()
    final.load_state_dict(best_state)
    test = evaluate(final, prep.test, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates="off")
    metrics = {"dev": best, "epoch": best_epoch, "test": test.value, "seconds": round(seconds, 1),
               "train_examples_per_s": round(examples * acc.num_processes / seconds, 2)}
    if acc.is_main_process:
        save_run(out, final, tokenizer, RunInfo(task=prep.task_dict(), max_len=cfg.max_len, kind=kind,
                                                metrics=metrics, extra={"config": asdict(cfg)}))
    acc.wait_for_everyone()
    acc.free_memory()
    log(stage=kind, done=True, test=test.value, seconds=round(seconds, 1))
    return metrics


# --------------------------------------------------------------------------------------------- stages II-III


# settings that do not change what a finished phase contains (so --resume may change them)
_RESUMABLE = ("out", "resume", "force", "progress", "eval_batch_size")


class _ProgressFile:
    """OUT/progress.json: the settings and the stages/phases done, each with its run dir. Only the main
    process writes it. --resume refuses a progress file written with other settings."""

    def __init__(self, out: Path, cfg, resume: bool, is_main: bool):
        self.file, self.is_main = out / "progress.json", is_main
        self.settings = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
        self.done: dict[str, str] = {}
        if resume and self.file.is_file():
            saved = json.loads(self.file.read_text())
            if saved.get("settings") != self.settings:
                changed = sorted(k for k in set(self.settings) | set(saved.get("settings", {}))
                                 if self.settings.get(k) != saved.get("settings", {}).get(k))
                raise HadSkipError(f"--resume: {out} was trained with other settings ({', '.join(changed)}); "
                                   "use the same options, or a new --out without --resume")
            self.done = saved["done"]
        elif is_main:
            self.file.unlink(missing_ok=True)

    def mark(self, name: str, run_dir: Path) -> None:
        self.done[name] = str(run_dir)
        if self.is_main:
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"settings": self.settings, "done": self.done}, indent=2))
            tmp.replace(self.file)


@dataclass
class _Stages:
    """What stages II and III of one train_hadskip call share."""

    cfg: HadSkipConfig
    acc: object  # accelerate.Accelerator
    record: _ProgressFile
    log: Log
    teacher_dir: Path
    tokenizer: object
    prep: Prepared
    num_layers: int
    weights: LossWeights

    def student_from(self, run_dir: Path):
        m, _, _ = load_run(run_dir)
        m.config.estimator, m.config.tau = self.cfg.estimator, self.cfg.tau
        return m

    def fresh_student(self):
        """The teacher with fresh gates of the requested size (seeded)."""
        from hadskip.model import Gate

        m = self.student_from(self.teacher_dir)
        m.config.gate_hidden = self.cfg.gate_hidden
        torch.manual_seed(self.cfg.seed)
        m.gates = torch.nn.ModuleList(Gate(m.config.hidden_size, self.cfg.gate_hidden, m.config.gate_open_bias)
                                      for _ in range(self.num_layers))
        return m

    def save(self, name: str, model, metrics: dict) -> Path:
        """Save a finished stage/phase as the run dir OUT/stages/NAME and record it in progress.json."""
        d = Path(self.cfg.out) / "stages" / name
        if self.acc.is_main_process:
            save_run(d, self.acc.unwrap_model(model), self.tokenizer, RunInfo(
                task=self.prep.task_dict(), max_len=self.cfg.max_len, kind=name, budget=self.cfg.budget,
                metrics=metrics))
        self.acc.wait_for_everyone()
        self.record.mark(name, d)
        return d


def _stage1(cfg: HadSkipConfig, record: _ProgressFile, timings: dict) -> Path:
    """The teacher's run dir: --teacher (checked to be a finetune run), or stage I run now (or resumed)."""
    if cfg.teacher:
        teacher_dir = Path(cfg.teacher)
        info = read_info(teacher_dir)
        if info.kind != "finetune":
            raise HadSkipError(f"--teacher {teacher_dir} is a {info.kind!r} run, not a finetune run")
        return teacher_dir
    teacher_dir = Path(cfg.out) / "stages" / "stage1"
    if "stage1" not in record.done:
        tc = TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
        tc.out, tc.force = str(teacher_dir), True  # our own stage dir: a finished but unrecorded stage I is redone
        t = time.time()
        finetune(tc)
        timings["stage1"] = time.time() - t
        record.mark("stage1", teacher_dir)
    return teacher_dir


def _gate_step(student, weights: LossWeights, target: float, batch, teacher=None) -> dict:
    """Stage II: task loss + budget penalty of the sampled gates (the backbone is frozen); with a teacher
    (--stage2-kd) also the distillation terms of stage III."""
    if teacher is not None:
        return _joint_step(student, teacher, weights, target, batch)
    o = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="sample")
    return {"task": task_loss(o.logits, batch["labels"]),
            "budget": weights.budget * budget_penalty(o.gates, target),
            "_mean_gate": o.gates.mean()}


def _stage2(st: _Stages, teacher=None) -> Path:
    """Gate initialisation: train only the gates of a fresh student at the target budget (distilling from
    `teacher` when given). Returns its run dir."""
    cfg, acc = st.cfg, st.acc
    student = st.fresh_student()
    for p in student.backbone_parameters():
        p.requires_grad_(False)
    opt = adamw([(list(student.gate_parameters()), cfg.gate_lr)], 0.0)
    dl = train_loader(acc, st.prep, cfg, cfg.seed + 2)
    student_p, opt = acc.prepare(student, opt)
    step = partial(_gate_step, student_p, st.weights, cfg.budget / st.num_layers, teacher=teacher)
    parts = loop.run_steps(acc, student_p, dl, opt, num_steps(len(dl), cfg.stage2_epochs), cfg.warmup, step,
                           "stage II (gates)", cfg.progress)
    dev = eval_split(acc, student_p, st.prep.dev, st.prep, cfg, gates="route")
    st.log(stage="stage2", **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
    return st.save("stage2", student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers})


def _joint_step(student, teacher, weights: LossWeights, target: float, batch, gates: str = "sample") -> dict:
    """Stage III: task + distillation from the frozen teacher + budget penalty at the phase's target.
    gates="hard": the gates' own decisions, as at inference (no gradient reaches the gates; the penalty is
    only logged)."""
    need_inner = bool(weights.kd_hidden or weights.kd_attention or weights.kd_embedding)
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    s = student(ids, mask, tt, gates=gates, output_hidden=need_inner, output_attentions=bool(weights.kd_attention))
    penalty = weights.budget * budget_penalty(s.gates, target)
    parts = {"task": weights.task * task_loss(s.logits, batch["labels"]),
             ("budget" if gates == "sample" else "_budget"): penalty}
    if weights.kd_logits or need_inner:
        with torch.no_grad():
            te = teacher(ids, mask, tt, gates="off", output_hidden=need_inner,
                         output_attentions=bool(weights.kd_attention))
        parts.update(distillation(s, te, mask, weights))
    parts["_mean_gate"] = s.gates.mean()
    return parts


def _stage3_phase(st: _Stages, teacher, schedule: list[float], j: int, last: Path | None) -> Path:
    """Phase j of stage III (budget k = schedule[j]): joint training from the previous phase's run dir `last`
    (or a fresh student). Returns the phase's run dir."""
    cfg, acc, k, L = st.cfg, st.acc, schedule[j], st.num_layers
    student = st.student_from(last) if last is not None else st.fresh_student()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = adamw([(list(student.backbone_parameters()), cfg.lr), (list(student.gate_parameters()), cfg.gate_lr)],
                cfg.weight_decay)
    dl = train_loader(acc, st.prep, cfg, cfg.seed + 10 + j)
    student_p, opt = acc.prepare(student, opt)
    epochs = phase_epochs(L, cfg)[j]
    total = num_steps(len(dl), epochs)
    hard = int(round(total * cfg.hard_tail)) if j == len(schedule) - 1 else 0  # the last steps on hard gates
    if hard and acc.num_processes > 1:  # DDP would stop at the gates that get no gradient on hard decisions
        raise HadSkipError("--hard-tail runs in one process only (the gates get no gradient in its steps)")
    desc = f"stage III k={k:g}/{L} ({j + 1}/{len(schedule)})"
    parts = loop.run_steps(acc, student_p, dl, opt, total - hard, cfg.warmup,
                           partial(_joint_step, student_p, teacher, st.weights, k / L), desc, cfg.progress,
                           total=total)
    if hard:
        hard_parts = loop.run_steps(acc, student_p, dl, opt, hard, cfg.warmup,
                                    partial(_joint_step, student_p, teacher, st.weights, k / L, gates="hard"),
                                    desc + " hard gates", cfg.progress, offset=total - hard, total=total,
                                    first_epoch=1000)
        parts.update({f"hard_{n}": v for n, v in hard_parts.items()})
    dev = eval_split(acc, student_p, st.prep.dev, st.prep, cfg, gates="route")
    st.log(stage="stage3", k=k, **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
    return st.save(f"stage3-k{k:g}", student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers, "k": k})


def train_hadskip(cfg: HadSkipConfig) -> dict:
    """Stages I (or --teacher), II and III. The final model is the run dir cfg.out. Returns its metrics."""
    check_hadskip(cfg)  # before the run dir exists
    out = claim_run_dir(cfg.out, resume=cfg.resume, force=cfg.force)
    acc = loop.accelerator(cfg.seed)
    record = _ProgressFile(out, cfg, cfg.resume, acc.is_main_process)
    acc.wait_for_everyone()
    log = Log(out, cfg.progress)
    t0 = time.time()
    timings: dict[str, float] = {}

    teacher_dir = _stage1(cfg, record, timings)
    teacher, tokenizer, tinfo = load_run(teacher_dir)
    if tinfo.max_len != cfg.max_len:
        log(note=f"teacher was trained with max_len {tinfo.max_len}; using it instead of {cfg.max_len}")
        cfg.max_len = tinfo.max_len
    timings.setdefault("stage1", float(tinfo.metrics.get("seconds", 0.0)))
    prep = Prepared(cfg, tokenizer)
    if prep.spec.num_labels != teacher.config.num_labels:
        raise HadSkipError(f"teacher has {teacher.config.num_labels} labels, task {prep.spec.name} has "
                           f"{prep.spec.num_labels}")
    st = _Stages(cfg, acc, record, log, teacher_dir, tokenizer, prep, teacher.num_layers, cfg.loss_weights())
    schedule = homotopy_schedule(st.num_layers, cfg.budget, cfg.homotopy, cfg.homotopy_start)

    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher = teacher.to(acc.device)  # frozen: no DDP wrapper (it has nothing to synchronise)
    last = None
    if cfg.gate_init:
        if "stage2" in record.done:
            last = Path(record.done["stage2"])
        else:
            t = time.time()
            last = _stage2(st, teacher if cfg.stage2_kd else None)
            timings["stage2"] = time.time() - t
            acc.free_memory()  # accelerate keeps every prepared model/optimizer otherwise
    for j, k in enumerate(schedule):
        name = f"stage3-k{k:g}"
        if name in record.done:
            last = Path(record.done[name])
            continue
        t = time.time()
        last = _stage3_phase(st, teacher, schedule, j, last)
        timings[name] = time.time() - t
        acc.free_memory()

    final, _, last_info = load_run(last)
    dev = last_info.metrics  # the last phase was evaluated on dev when it was saved
    test = evaluate(final, prep.test, prep.spec.metric, prep.pad_id, cfg.eval_batch_size)
    total = time.time() - t0 + (timings["stage1"] if cfg.teacher else 0.0)
    metrics = {"dev": dev["dev"], "dev_avg_layers": dev["dev_avg_layers"], "test": test.value,
               "test_avg_layers": test.avg_layers, "teacher_test": tinfo.metrics.get("test"),
               "seconds": {k: round(v, 1) for k, v in timings.items()}, "total_seconds": round(total, 1)}
    if acc.is_main_process:
        save_run(out, final, tokenizer, RunInfo(task=prep.task_dict(), max_len=cfg.max_len, kind="hadskip",
                                                 budget=cfg.budget, metrics=metrics,
                                                 extra={"config": asdict(cfg), "teacher": str(teacher_dir),
                                                        "schedule": schedule,
                                                        "phase_epochs": phase_epochs(st.num_layers, cfg)}))
    log(stage="done", test=test.value, test_avg_layers=test.avg_layers, total_seconds=round(total, 1))
    return metrics
