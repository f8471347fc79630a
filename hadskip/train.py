"""Training: plain fine-tuning (stage I, the teacher) and HadSkip's stages II and III.

    stage I    fine-tune the backbone + head, gates unused                          -> the teacher
    stage II   backbone frozen, gates only: task loss + budget penalty at s = K/L   (gate initialisation)
    stage III  everything trains: task + KD(logits, hidden, attention, embeddings) + budget penalty,
               homotopic budget k = L, L-1, ..., K (one phase per k, each from the previous phase's weights)

DESIGN.md §3 trains stage II without the budget term; gates then only learn to stay open (their initial
state), which initialises nothing. We keep the budget at the target s in stage II so the gates learn which
layers each input can spare while the backbone cannot adapt, and stage III's homotopy then starts at k = L.

Every stage and phase is saved as a run dir under OUT/stages/ and recorded in OUT/progress.json;
`resume=True` skips what is recorded, losing at most the phase that was running. Training goes through
`accelerate`, so `accelerate launch -m hadskip.cli train ...` runs data-parallel. Not included: mixed
precision flags (accelerate's own config applies), gradient accumulation.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from hadskip.batches import encode_split, loader
from hadskip.checkpoint import RunInfo, load_run, read_info, save_run
from hadskip.data import load_task
from hadskip.errors import HadSkipError
from hadskip.evaluate import evaluate
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

    def __post_init__(self) -> None:
        if self.max_len < 8 or self.batch_size < 1 or self.lr <= 0 or self.epochs <= 0:
            raise HadSkipError("need max_len >= 8, batch_size >= 1, lr > 0, epochs > 0")


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
    kd: str = "full"  # "full" | "logits" | "none"
    weights: LossWeights = field(default_factory=LossWeights)
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget <= 0:
            raise HadSkipError(f"--budget must be > 0, got {self.budget}")
        if self.kd not in ("full", "logits", "none"):
            raise HadSkipError(f"--kd must be full, logits or none, got {self.kd!r}")
        if self.estimator not in ("reinmax", "ste"):
            raise HadSkipError(f"--estimator must be reinmax or ste, got {self.estimator!r}")

    def loss_weights(self) -> LossWeights:
        w = LossWeights(**asdict(self.weights))
        if self.kd != "full":
            w.kd_hidden = w.kd_attention = w.kd_embedding = 0.0
        if self.kd == "none":
            w.kd_logits = 0.0
        return w


def homotopy_schedule(num_layers: int, budget: float, homotopy: bool = True) -> list[float]:
    """k = L, L-1, ..., down to the budget (fractional budgets end on themselves): L=6, K=2.5 -> 6,5,4,3,2.5."""
    if budget > num_layers:
        raise HadSkipError(f"budget {budget} is more than the backbone's {num_layers} layers")
    if not homotopy:
        return [float(budget)]
    ks = [float(k) for k in range(num_layers, math.ceil(budget) - 1, -1) if k >= budget]
    if not ks or ks[-1] != budget:
        ks.append(float(budget))
    return ks


# --------------------------------------------------------------------------------------------- plumbing


class Log:
    """Per-phase records to OUT/log.jsonl and one line each to stderr."""

    def __init__(self, out: Path, enabled: bool = True):
        self.file = out / "log.jsonl"
        self.enabled = enabled

    def __call__(self, **record) -> None:
        record["time"] = round(time.time(), 1)
        with open(self.file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.enabled:
            parts = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                             if k != "time")
            print(parts, file=sys.stderr, flush=True)


def _accelerator(seed: int):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    acc = Accelerator()
    set_seed(seed)
    return acc


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    from rich.console import Console

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def _optimizer(model, groups: list[tuple[list, float]], weight_decay: float):
    params = [{"params": [p for p in ps if p.requires_grad], "lr": lr, "weight_decay": weight_decay}
              for ps, lr in groups]
    params = [g for g in params if g["params"]]
    return torch.optim.AdamW(params)


def _run_steps(acc, model, dl, optimizer, steps: int, warmup: float, step_fn, desc: str, progress: bool,
               offset: int = 0, total: int | None = None, first_epoch: int = 0):
    """`steps` optimisation steps over `dl` (re-iterated per epoch) with linear warmup/decay.
    `step_fn(batch)` returns loss parts; parts named "_x" are only logged (as "x"). Returns their means."""
    # linear warmup then linear decay over `total` steps, of which this call runs [offset, offset + steps)
    total = total or steps
    warm = max(1, int(total * warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + offset + 1) / warm, max(0.0, (total - s - offset) / max(1, total - warm))))
    sums: dict[str, float] = defaultdict(float)
    done, epoch = 0, first_epoch
    model.train()
    with _progress(progress and acc.is_main_process) as bar:
        task = bar.add_task(desc, total=steps, status="")
        while done < steps:
            dl.dataset.epoch = epoch  # reseeds the shuffle
            for batch in dl:
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                parts = step_fn(batch)
                loss = sum(v for k, v in parts.items() if not k.startswith("_"))
                acc.backward(loss)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in parts.items():
                    sums[k.lstrip("_")] += float(v.detach())
                done += 1
                bar.update(task, advance=1, status=f"loss {float(loss.detach()):.3f}")
                if done >= steps:
                    break
            else:
                if done == 0:
                    raise HadSkipError("an epoch yielded no training batch")
            epoch += 1
    return {k: v / max(1, done) for k, v in sums.items()}


def _load_data(cfg: TrainConfig):
    return load_task(cfg.task, text_col=cfg.text_col, pair_col=cfg.pair_col, label_col=cfg.label_col,
                     metric=cfg.metric, seed=cfg.seed, max_examples=cfg.max_examples)


class Prepared:
    """Task data tokenised once, shared by every stage."""

    def __init__(self, cfg: TrainConfig, tokenizer, data=None):
        self.data = data if data is not None else _load_data(cfg)
        self.source = {"task": cfg.task, "text_col": cfg.text_col, "pair_col": cfg.pair_col,
                       "label_col": cfg.label_col, "metric": cfg.metric}
        self.spec = self.data.spec
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.train = encode_split(self.data.train, tokenizer, cfg.max_len)
        self.dev = encode_split(self.data.dev, tokenizer, cfg.max_len)
        self.test = encode_split(self.data.test, tokenizer, cfg.max_len)

    def task_dict(self) -> dict:
        """The TaskSpec plus how to load it again (`source` and column options) for `hadskip eval`."""
        d = asdict(self.spec)
        d["label_names"] = list(d.get("label_names") or [])
        d["source"] = self.source
        return d


def _train_loader(acc, prep: Prepared, cfg: TrainConfig, seed: int):
    """This process's shard of the shuffled training batches (see BatchIterable)."""
    return loader(prep.train, cfg.batch_size, prep.pad_id, shuffle=True, seed=seed, rank=acc.process_index,
                  world=acc.num_processes)


def _steps(n_batches: int, epochs: float) -> int:
    return max(1, math.ceil(n_batches * epochs))


def _eval(acc, model, enc, prep: Prepared, cfg: TrainConfig, gates: str):
    m = acc.unwrap_model(model)
    return evaluate(m, enc, prep.spec.metric, prep.pad_id, cfg.eval_batch_size, gates=gates)


# --------------------------------------------------------------------------------------------- stage I


def finetune(cfg: TrainConfig, init=None, kind: str = "finetune") -> dict:
    """Fine-tune the plain backbone (or `init`, a (GatedEncoder, tokenizer) pair) with every layer on; keep the
    best dev epoch as the run dir cfg.out, of the given `kind`. Returns its metrics."""
    from hadskip.backbone import build_gated

    check_finetune(cfg, init)  # before the run dir exists
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out, cfg.progress)
    acc = _accelerator(cfg.seed)
    t0 = time.time()
    data = _load_data(cfg)
    model, tokenizer = init if init is not None else build_gated(cfg.backbone, num_labels=data.spec.num_labels)
    prep = Prepared(cfg, tokenizer, data)
    for p in model.gate_parameters():
        p.requires_grad_(False)
    opt = _optimizer(model, [(list(model.backbone_parameters()), cfg.lr)], cfg.weight_decay)
    dl = _train_loader(acc, prep, cfg, cfg.seed)
    model, opt = acc.prepare(model, opt)

    def step(batch):
        out_ = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="off")
        return {"task": task_loss(out_.logits, batch["labels"])}

    # the best epoch is kept in memory and the run dir written once at the end: a run.json on disk always
    # means a finished run (make, compare and --teacher rely on that)
    best, best_state, best_epoch, examples, done = None, None, 0, 0, 0
    epochs = math.ceil(cfg.epochs)
    total = _steps(len(dl), cfg.epochs)
    for epoch in range(epochs):
        steps = min(len(dl), total - done)
        # one warmup/decay schedule over all epochs, evaluated on dev after each
        parts = _run_steps(acc, model, dl, opt, steps, cfg.warmup, step, f"{kind} epoch {epoch + 1}/{epochs}",
                           cfg.progress, offset=done, total=total, first_epoch=epoch)
        done += steps
        examples += steps * cfg.batch_size
        dev = _eval(acc, model, prep.dev, prep, cfg, gates="off")
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
_RESUMABLE = ("out", "resume", "progress", "eval_batch_size")


class _Progress:
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


def train_hadskip(cfg: HadSkipConfig) -> dict:
    """Stages I (or --teacher), II and III. The final model is the run dir cfg.out. Returns its metrics."""
    check_hadskip(cfg)  # before the run dir exists
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = out / "stages"
    acc = _accelerator(cfg.seed)
    progress = _Progress(out, cfg, cfg.resume, acc.is_main_process)
    acc.wait_for_everyone()
    log = Log(out, cfg.progress)
    t0 = time.time()
    timings: dict[str, float] = {}

    # stage I: the teacher
    if cfg.teacher:
        teacher_dir = Path(cfg.teacher)
        info = read_info(teacher_dir)
        if info.kind != "finetune":
            raise HadSkipError(f"--teacher {teacher_dir} is a {info.kind!r} run, not a finetune run")
    else:
        teacher_dir = stages / "stage1"
        if "stage1" not in progress.done:
            tc = TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
            tc.out = str(teacher_dir)
            t = time.time()
            finetune(tc)
            timings["stage1"] = time.time() - t
            progress.mark("stage1", teacher_dir)
    teacher, tokenizer, tinfo = load_run(teacher_dir)
    if tinfo.max_len != cfg.max_len:
        log(note=f"teacher was trained with max_len {tinfo.max_len}; using it instead of {cfg.max_len}")
        cfg.max_len = tinfo.max_len
    timings.setdefault("stage1", float(tinfo.metrics.get("seconds", 0.0)))
    prep = Prepared(cfg, tokenizer)
    if prep.spec.num_labels != teacher.config.num_labels:
        raise HadSkipError(f"teacher has {teacher.config.num_labels} labels, task {prep.spec.name} has "
                           f"{prep.spec.num_labels}")
    L = teacher.num_layers
    schedule = homotopy_schedule(L, cfg.budget, cfg.homotopy)
    weights = cfg.loss_weights()

    def student_from(run_dir: Path):
        m, _, _ = load_run(run_dir)
        m.config.estimator, m.config.tau = cfg.estimator, cfg.tau
        return m

    # the student starts as the teacher with fresh gates of the requested size
    def fresh_student():
        from hadskip.model import Gate

        m = student_from(teacher_dir)
        m.config.gate_hidden = cfg.gate_hidden
        torch.manual_seed(cfg.seed)
        m.gates = torch.nn.ModuleList(Gate(m.config.hidden_size, cfg.gate_hidden, m.config.gate_open_bias)
                                      for _ in range(L))
        return m

    def save_stage(name: str, model, metrics: dict) -> Path:
        d = stages / name
        if acc.is_main_process:
            save_run(d, acc.unwrap_model(model), tokenizer, RunInfo(
                task=prep.task_dict(), max_len=cfg.max_len, kind=name, budget=cfg.budget, metrics=metrics))
        acc.wait_for_everyone()
        progress.mark(name, d)
        return d

    last = None
    # stage II: gate initialisation
    if cfg.gate_init:
        if "stage2" in progress.done:
            last = Path(progress.done["stage2"])
        else:
            t = time.time()
            student = fresh_student()
            for p in student.backbone_parameters():
                p.requires_grad_(False)
            opt = _optimizer(student, [(list(student.gate_parameters()), cfg.gate_lr)], 0.0)
            dl = _train_loader(acc, prep, cfg, cfg.seed + 2)
            student_p, opt = acc.prepare(student, opt)
            target = cfg.budget / L

            def step2(batch):
                o = student_p(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="sample")
                return {"task": task_loss(o.logits, batch["labels"]),
                        "budget": weights.budget * budget_penalty(o.gates, target),
                        "_mean_gate": o.gates.mean()}

            parts = _run_steps(acc, student_p, dl, opt, _steps(len(dl), cfg.stage2_epochs), cfg.warmup, step2,
                               "stage II (gates)", cfg.progress)
            dev = _eval(acc, student_p, prep.dev, prep, cfg, gates="route")
            log(stage="stage2", **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
            last = save_stage("stage2", student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers})
            timings["stage2"] = time.time() - t
            student = student_p = opt = None  # noqa: F841  (drop the last references before freeing)
            acc.free_memory()  # accelerate keeps every prepared model/optimizer otherwise

    # stage III: joint training with KD under the homotopic budget
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher = teacher.to(acc.device)  # frozen: no DDP wrapper (it has nothing to synchronise)
    need_inner = weights.kd_hidden or weights.kd_attention or weights.kd_embedding
    for j, k in enumerate(schedule):
        name = f"stage3-k{k:g}"
        if name in progress.done:
            last = Path(progress.done[name])
            continue
        t = time.time()
        student = student_from(last) if last is not None else fresh_student()
        for p in student.parameters():
            p.requires_grad_(True)
        opt = _optimizer(student, [(list(student.backbone_parameters()), cfg.lr),
                                   (list(student.gate_parameters()), cfg.gate_lr)], cfg.weight_decay)
        dl = _train_loader(acc, prep, cfg, cfg.seed + 10 + j)
        student_p, opt = acc.prepare(student, opt)
        target = k / L

        def step3(batch, student_p=student_p, target=target):
            ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
            s = student_p(ids, mask, tt, gates="sample", output_hidden=bool(need_inner),
                          output_attentions=bool(weights.kd_attention))
            parts = {"task": weights.task * task_loss(s.logits, batch["labels"]),
                     "budget": weights.budget * budget_penalty(s.gates, target)}
            if weights.kd_logits or need_inner:
                with torch.no_grad():
                    te = teacher(ids, mask, tt, gates="off", output_hidden=bool(need_inner),
                                 output_attentions=bool(weights.kd_attention))
                parts.update(distillation(s, te, mask, weights))
            parts["_mean_gate"] = s.gates.mean()
            return parts

        epochs = cfg.final_phase_epochs if j == len(schedule) - 1 else cfg.phase_epochs
        parts = _run_steps(acc, student_p, dl, opt, _steps(len(dl), epochs), cfg.warmup, step3,
                           f"stage III k={k:g}/{L} ({j + 1}/{len(schedule)})", cfg.progress)
        dev = _eval(acc, student_p, prep.dev, prep, cfg, gates="route")
        log(stage="stage3", k=k, **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
        last = save_stage(name, student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers, "k": k})
        timings[name] = time.time() - t
        student = student_p = opt = step3 = None  # noqa: F841  (drop the last references before freeing)
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
                                                        "schedule": schedule}))
    log(stage="done", test=test.value, test_avg_layers=test.avg_layers, total_seconds=round(total, 1))
    return metrics
