"""Training: plain fine-tuning (stage I, the teacher) and HadSkip's stages II and III.

    stage I    fine-tune the backbone + head, gates unused                          -> the teacher
    stage II   backbone frozen, gates only: task loss + budget penalty at s = K/L   (gate initialisation)
    stage III  everything trains: task + KD(logits, hidden, attention, embeddings) + budget penalty,
               homotopic budget k = L, L-1, ..., K (one phase per k, each from the previous phase's weights)

Stage II keeps the budget term at the target s (the paper's stage II has none, and its gates then only learn
to stay open, their initial state, which initialises nothing): the gates learn which layers each input can
spare while the backbone cannot adapt, and stage III's homotopy then starts at k = L.

--exit-heads (the skip + exit route): the student also gets exit heads after layers 1..L-1 (copies of the
teacher's head), trained at the gate learning rate in stage III, whose loss gets the part "exits" (`exit_loss`).
Stage II leaves them frozen and out of its loss, so it is the paper's gate initialisation unchanged (the same
seed gives the same stage II as without exits) and the two routes differ by stage III only.

Every stage and phase is saved as a run dir under OUT/stages/ and recorded in OUT/progress.json;
`resume=True` skips what is recorded, losing at most the phase that was running. Training goes through
`accelerate` (the loop itself is hadskip.training.loop), so `accelerate launch -m hadskip.cli train ...` runs
data-parallel. One function per stage: `finetune` (I), `_stage2`, `_stage3_phase`; `train_hadskip` chains them.
Not included: mixed precision flags (accelerate's own config applies), gradient accumulation.
"""

from __future__ import annotations

import json

import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import torch

from hadskip.errors import HadSkipError
from hadskip.evaluation.evaluate import evaluate
from hadskip.modeling.checkpoint import RunInfo, claim_run_dir, load_run, read_teacher, save_run
from hadskip.modeling.hf_classifier import classifier_location
from hadskip.modeling.units import Gate
from hadskip.training import loop
from hadskip.training.config import HadSkipConfig, TrainConfig
from hadskip.training.finetune import finetune
from hadskip.training.loop import Log, Prepared, adamw, eval_split, num_steps, train_loader
from hadskip.training.losses import LossWeights, budget_penalty, distillation, exit_loss, task_loss
from hadskip.training.preflight import check_hadskip, resolve_task
from hadskip.training.progress import ProgressFile
from hadskip.training.schedule import budget_miss, homotopy_schedule, phase_epochs
from hadskip.training.teacher_import import IMPORT_STAGE, import_teacher


@dataclass
class _Stages:
    """What stages II and III of one train_hadskip call share."""

    cfg: HadSkipConfig
    acc: object  # accelerate.Accelerator
    record: ProgressFile
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
        """The teacher with fresh gates of the requested size (seeded), and exit heads (copies of its head)
        when cfg.exit_heads."""
        m = self.student_from(self.teacher_dir)
        m.config.gate_hidden, m.config.gate_pool = self.cfg.gate_hidden, self.cfg.gate_pool
        torch.manual_seed(self.cfg.seed)
        m.gates = torch.nn.ModuleList(Gate(m.config.hidden_size, self.cfg.gate_hidden, m.config.gate_open_bias,
                                           self.cfg.gate_pool) for _ in range(self.num_layers))
        if self.cfg.exit_heads:
            m.add_exits(self.cfg.exit_pool or "mean")
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


def _stage1(cfg: HadSkipConfig, record: ProgressFile, timings: dict) -> Path:
    """The teacher's run dir: --teacher (checked to be a finetune run), or stage I run now (or resumed)."""
    if cfg.teacher and classifier_location(cfg.teacher) is not None:  # a transformers classifier: imported once
        teacher_dir = Path(cfg.out) / "stages" / IMPORT_STAGE
        if IMPORT_STAGE not in record.done:
            t = time.time()
            import_teacher(cfg, teacher_dir)
            timings["stage1"] = time.time() - t
            record.mark(IMPORT_STAGE, teacher_dir)
        return teacher_dir
    if cfg.teacher:
        teacher_dir = Path(cfg.teacher)
        read_teacher(teacher_dir)
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


def _gate_step(student, weights: LossWeights, target: float, batch, teacher=None, rule: str = "mean") -> dict:
    """Stage II: task loss + budget penalty of the sampled gates (the backbone is frozen); with a teacher
    (--stage2-kd) also the distillation terms of stage III."""
    if teacher is not None:
        return _joint_step(student, teacher, weights, target, batch, rule=rule, with_exits=False)
    o = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], gates="sample")
    return {"task": task_loss(o.logits, batch["labels"]),
            "budget": weights.budget * budget_penalty(o.gates, target, rule),
            "_mean_gate": o.gates.mean()}


def _stage2(st: _Stages, teacher=None) -> Path:
    """Gate initialisation: train only the gates of a fresh student at the target budget (distilling from
    `teacher` when given). Returns its run dir."""
    cfg, acc = st.cfg, st.acc
    student = st.fresh_student()
    for p in [*student.backbone_parameters(), *student.exit_parameters()]:  # exit heads wait for stage III
        p.requires_grad_(False)
    opt = adamw([(list(student.gate_parameters()), cfg.gate_lr)], 0.0)
    dl = train_loader(acc, st.prep, cfg, cfg.seed + 2)
    student_p, opt = acc.prepare(student, opt)
    step = partial(_gate_step, student_p, st.weights, cfg.budget / st.num_layers, teacher=teacher,
                   rule=cfg.gate_penalty)
    parts = loop.run_steps(acc, student_p, dl, opt, num_steps(len(dl), cfg.stage2_epochs), cfg.warmup, step,
                           "stage II (gates)", cfg.progress)
    dev = eval_split(acc, student_p, st.prep.dev, st.prep, cfg, gates="route")
    st.log(stage="stage2", **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
    return st.save("stage2", student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers})


def _joint_step(student, teacher, weights: LossWeights, target: float, batch, gates: str = "sample",
                rule: str = "mean", with_exits: bool = True) -> dict:
    """Stage III: task + distillation from the frozen teacher + budget penalty at the phase's target, and with
    exit heads the part "exits" (losses.exit_loss on the same gates' hidden states).
    gates="hard": the gates' own decisions, as at inference (no gradient reaches the gates; the penalty is
    only logged)."""
    need_inner = bool(weights.kd_hidden or weights.kd_attention or weights.kd_embedding)
    exits = getattr(student, "module", student).exits if with_exits else None  # DDP wraps the model
    ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    s = student(ids, mask, tt, gates=gates, output_hidden=need_inner or exits is not None,
                output_attentions=bool(weights.kd_attention))
    penalty = weights.budget * budget_penalty(s.gates, target, rule)
    parts = {"task": weights.task * task_loss(s.logits, batch["labels"]),
             ("budget" if gates == "sample" else "_budget"): penalty}
    te = None
    if weights.kd_logits or need_inner:
        with torch.no_grad():
            te = teacher(ids, mask, tt, gates="off", output_hidden=need_inner,
                         output_attentions=bool(weights.kd_attention))
        parts.update(distillation(s, te, mask, weights))
    if exits is not None:
        z = getattr(student, "module", student).exit_logits(s.hidden_states, mask)  # (B, L-1, C)
        parts["exits"] = exit_loss(z, batch["labels"], te.logits if te is not None else None, weights)
    parts["_mean_gate"] = s.gates.mean()
    return parts


def _stage3_phase(st: _Stages, teacher, schedule: list[float], j: int, last: Path | None) -> Path:
    """Phase j of stage III (budget k = schedule[j]): joint training from the previous phase's run dir `last`
    (or a fresh student). Returns the phase's run dir."""
    cfg, acc, k, L = st.cfg, st.acc, schedule[j], st.num_layers
    student = st.student_from(last) if last is not None else st.fresh_student()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = adamw([(list(student.backbone_parameters()), cfg.lr),  # new modules (gates, exit heads): cfg.gate_lr
                 (list(student.gate_parameters()) + list(student.exit_parameters()), cfg.gate_lr)],
                cfg.weight_decay)
    dl = train_loader(acc, st.prep, cfg, cfg.seed + 10 + j)
    student_p, opt = acc.prepare(student, opt)
    epochs = phase_epochs(L, cfg)[j]
    total = num_steps(len(dl), epochs)
    hard = int(round(total * cfg.hard_tail)) if j == len(schedule) - 1 else 0  # the last steps on hard gates
    if hard and acc.num_processes > 1:  # DDP would stop at the gates that get no gradient on hard decisions
        raise HadSkipError("--hard-tail runs in one process only (the gates get no gradient in its steps)")
    desc = f"stage III k={k:g}/{L} ({j + 1}/{len(schedule)})"

    def on_pass(done: int) -> None:  # the dev curve inside a phase (its end is logged below)
        if done < total - hard:
            d = eval_split(acc, student_p, st.prep.dev, st.prep, cfg, gates="route")
            st.log(stage="stage3-pass", k=k, phase_epochs=round(done / len(dl), 4), dev=d.value,
                   dev_avg_layers=d.avg_layers)

    parts = loop.run_steps(acc, student_p, dl, opt, total - hard, cfg.warmup,
                           partial(_joint_step, student_p, teacher, st.weights, k / L, rule=cfg.gate_penalty),
                           desc, cfg.progress, total=total, on_pass=on_pass)
    if hard:
        hard_parts = loop.run_steps(acc, student_p, dl, opt, hard, cfg.warmup,
                                    partial(_joint_step, student_p, teacher, st.weights, k / L, gates="hard",
                                            rule=cfg.gate_penalty),
                                    desc + " hard gates", cfg.progress, offset=total - hard, total=total,
                                    first_epoch=1000)
        parts.update({f"hard_{n}": v for n, v in hard_parts.items()})
    dev = eval_split(acc, student_p, st.prep.dev, st.prep, cfg, gates="route")
    st.log(stage="stage3", k=k, **parts, dev=dev.value, dev_avg_layers=dev.avg_layers)
    return st.save(f"stage3-k{k:g}", student_p, {"dev": dev.value, "dev_avg_layers": dev.avg_layers, "k": k})


def dev_curve(log_file: Path, schedule: list[float], epochs: list[float]) -> list[list[float]]:
    """Stage III's dev curve from OUT/log.jsonl: [[stage III epochs so far, k, dev metric, dev avg layers], ...]
    (a phase's passes and its end; a phase redone after a kill counts once, its last records)."""
    start = {k: sum(epochs[:j]) for j, k in enumerate(schedule)}
    points: dict[tuple[float, float], list[float]] = {}
    for line in log_file.read_text().splitlines() if log_file.is_file() else []:
        r = json.loads(line)
        if r.get("stage") not in ("stage3", "stage3-pass") or r.get("k") not in start:
            continue
        k = r["k"]
        done = epochs[schedule.index(k)] if r["stage"] == "stage3" else r["phase_epochs"]
        at = round(start[k] + done, 4)
        points[(at, k)] = [at, k, r["dev"], r["dev_avg_layers"]]
    return [points[key] for key in sorted(points)]


def train_hadskip(cfg: HadSkipConfig) -> dict:
    """Stages I (or --teacher), II and III. The final model is the run dir cfg.out. Returns its metrics."""
    resolve_task(cfg)  # no task given: the teacher's
    check_hadskip(cfg)  # before the run dir exists
    out = claim_run_dir(cfg.out, resume=cfg.resume, force=cfg.force)
    acc = loop.accelerator(cfg.seed)
    record = ProgressFile(out, cfg, cfg.resume, acc.is_main_process)
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
    if cfg.exit_heads and teacher.num_layers < 2:
        raise HadSkipError("--exit-heads needs a teacher of at least 2 layers (an exit after each layer but the last)")
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
    external = cfg.teacher and teacher_dir == Path(cfg.teacher)  # a finetune run made before this one
    total = time.time() - t0 + (timings["stage1"] if external else 0.0)
    metrics = {"dev": dev["dev"], "dev_avg_layers": dev["dev_avg_layers"], "test": test.value,
               "test_avg_layers": test.avg_layers, "teacher_test": tinfo.metrics.get("test"),
               "seconds": {k: round(v, 1) for k, v in timings.items()}, "total_seconds": round(total, 1),
               "budget_missed": budget_miss(cfg.budget, dev["dev_avg_layers"], cfg.final_phase_epochs),
               "dev_curve": dev_curve(out / "log.jsonl", schedule, phase_epochs(st.num_layers, cfg))}
    if acc.is_main_process:
        save_run(out, final, tokenizer, RunInfo(task=prep.task_dict(), max_len=cfg.max_len, kind="hadskip",
                                                 budget=cfg.budget, metrics=metrics,
                                                 extra={"config": asdict(cfg), "teacher": str(teacher_dir),
                                                        "schedule": schedule,
                                                        "phase_epochs": phase_epochs(st.num_layers, cfg)}))
    log(stage="done", test=test.value, test_avg_layers=test.avg_layers, total_seconds=round(total, 1))
    return metrics
