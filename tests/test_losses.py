"""HadSkip's loss parts against hand computations, what distillation does for skipped layers, and the stage
invariants: stage II trains the gates only, stage III never changes the teacher."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest
import torch

from hadskip.training import stages as train
from hadskip.training.losses import LossWeights, attention_mse, budget_penalty, distillation, kd_logits, masked_mse
from hadskip.modeling.reinmax import reinmax
from test_runtime_support import one_torch_thread  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- kd_logits


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) per row, batch-mean, in float64 by hand."""
    p, q = p.double(), q.double()
    return float((p * (p.log() - q.log())).sum(-1).mean())


# two rows, three classes; the teacher is confident, the student is not, so KL(p||q) != KL(q||p)
STUDENT = torch.tensor([[0.2, 0.1, 0.0], [1.0, 0.5, -0.5]])
TEACHER = torch.tensor([[4.0, -1.0, 0.0], [-2.0, 3.0, 0.5]])


def test_kd_logits_is_kl_from_the_teacher_to_the_student():
    p, q = TEACHER.softmax(-1), STUDENT.softmax(-1)  # target (teacher), model (student)
    forward, reverse = _kl(p, q), _kl(q, p)
    assert abs(forward - reverse) > 0.3  # the example tells the two directions apart
    got = float(kd_logits(STUDENT, TEACHER))
    assert got == pytest.approx(forward, rel=1e-5)
    assert got != pytest.approx(reverse, rel=0.05)


def test_kd_logits_temperature():
    for t in (1.0, 2.0, 0.5):
        p, q = (TEACHER / t).softmax(-1), (STUDENT / t).softmax(-1)
        assert float(kd_logits(STUDENT, TEACHER, t)) == pytest.approx(t * t * _kl(p, q), rel=1e-5), t
    t1, t2 = float(kd_logits(STUDENT, TEACHER, 1.0)), float(kd_logits(STUDENT, TEACHER, 2.0))
    assert abs(t1 - t2) > 0.1  # T matters (T^2 times a KL of softer distributions)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)) * 3
    for t in (1.0, 2.0):
        assert abs(float(kd_logits(x, x.clone(), t))) < 1e-6


def test_kd_logits_gradient_pulls_the_student_to_the_teacher():
    """d KL(p||q) / d s = (q - p) / B at T = 1: a descent step moves q toward p."""
    s = STUDENT.clone().requires_grad_(True)
    kd_logits(s, TEACHER).backward()
    expected = (STUDENT.softmax(-1) - TEACHER.softmax(-1)) / STUDENT.shape[0]
    assert torch.allclose(s.grad, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------- masked MSEs


def _padded_batch(seed: int = 0):
    """(student, teacher, mask) hidden states of a batch of 3 rows padded to 5 tokens (5, 3 and 1 attended)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g), mask


def test_masked_mse_ignores_padding_and_averages_over_attended_tokens():
    s, t, mask = _padded_batch()
    base = masked_mse(s, t, mask)
    # hand value: squared error over attended (row, token, feature) entries / their number
    total, count = 0.0, 0
    for b in range(3):
        for i in range(5):
            if mask[b, i]:
                total += float(((s[b, i] - t[b, i]) ** 2).sum())
                count += s.shape[-1]
    assert count == 9 * 4
    assert float(base) == pytest.approx(total / count, rel=1e-6)
    padded = s.clone()
    padded[mask == 0] += 100.0
    assert torch.equal(masked_mse(padded, t, mask), base)
    attended = s.clone()
    attended[1, 2] += 1.0
    assert float(masked_mse(attended, t, mask)) > float(base) + 1e-3


def test_attention_mse_ignores_padded_queries_and_keys():
    g = torch.Generator().manual_seed(1)
    _, _, mask = _padded_batch()
    heads = 2
    s = torch.rand(3, heads, 5, 5, generator=g)
    t = torch.rand(3, heads, 5, 5, generator=g)
    base = attention_mse(s, t, mask)
    total, count = 0.0, 0
    for b in range(3):
        for h in range(heads):
            for qi in range(5):
                for ki in range(5):
                    if mask[b, qi] and mask[b, ki]:
                        total += float((s[b, h, qi, ki] - t[b, h, qi, ki]) ** 2)
                        count += 1
    assert count == heads * (25 + 9 + 1)
    assert float(base) == pytest.approx(total / count, rel=1e-6)
    for b, qi, ki in ((1, 3, 0), (1, 0, 4), (2, 1, 1), (2, 0, 3)):  # a padded query or a padded key
        x = s.clone()
        x[b, :, qi, ki] += 5.0
        assert torch.equal(attention_mse(x, t, mask), base), (b, qi, ki)
    x = s.clone()
    x[1, 1, 2, 0] += 1.0  # both attended
    assert float(attention_mse(x, t, mask)) > float(base) + 1e-3


# --------------------------------------------------------------------------------------------- skipped layers


@pytest.fixture(scope="module")
def sampled():
    """A tiny student in "sample" mode with some gates closed and some open, and a tiny teacher."""
    from hadskip.testing import tiny_model, tiny_sentences

    student, tok = tiny_model("bert", seed=1, gate_spread=1.0)  # seed 1: gates open and closed in every layer
    teacher, _ = tiny_model("bert", seed=2)
    with torch.no_grad():  # random init attends almost uniformly: sharpen it so attention errors are not ~0
        for model in (student, teacher):
            for name, p in model.named_parameters():
                if name.endswith(("attention.self.query.weight", "attention.self.key.weight")):
                    p.mul_(20.0)
    enc = tok(tiny_sentences(8, seed=3, max_words=12), padding=True, return_tensors="pt")
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    s = student(ids, mask, tt, gates="sample", output_hidden=True, output_attentions=True,
                generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        te = teacher(ids, mask, tt, gates="off", output_hidden=True, output_attentions=True)
    g = s.gates.detach()
    # the cases this file is about exist: a closed gate and an open one, padding in the batch
    assert ((g == 0).any(0) & (g == 1).any(0)).all() and (mask == 0).any(), g
    return {"student": student, "teacher": teacher, "ids": ids, "mask": mask, "tt": tt, "s": s, "te": te, "g": g}


def test_sample_mode_runs_every_layer_and_mixes_the_hidden_state(sampled):
    """Every layer runs on every row. With h_i = hidden_states[i] (h_0 the embeddings) and layer i (from 0)
    computing (f_i, a_i) from h_i: attentions[i] is a_i whatever the gate, and hidden_states[i+1] is
    g*f_i + (1-g)*h_i, so a row whose gate i is closed carries h_i on unchanged."""
    student, mask, s, g = sampled["student"], sampled["mask"], sampled["s"], sampled["g"]
    with torch.no_grad():
        h = student.embeddings(sampled["ids"], mask, sampled["tt"])
        assert torch.allclose(s.hidden_states[0], h, atol=1e-6)
        for i, layer in enumerate(student.layers):
            f, att = layer(h, mask, output_attentions=True)
            assert torch.allclose(s.attentions[i], att, atol=1e-6), i  # closed rows included
            h = g[:, i, None, None] * f + (1 - g[:, i, None, None]) * h
            assert torch.allclose(s.hidden_states[i + 1], h, atol=1e-6), i
            closed = g[:, i] == 0
            assert torch.equal(s.hidden_states[i + 1][closed], s.hidden_states[i][closed]), i
            # a closed row's attention is a real attention map (rows sum to 1), not zeros
            assert torch.allclose(s.attentions[i][closed].sum(-1), torch.ones_like(att[closed].sum(-1)), atol=1e-5)


def test_distillation_of_skipped_layers(sampled):
    """Pins what stage III's KD does for a layer whose gate is closed on a row:
    - kd_attention compares that layer's own attention on the row with the teacher's layer's (skipped rows
      count, with the same weight as the others, and their error trains the skipped layer);
    - kd_hidden compares the mixed state hidden_states[i+1], which for a closed row is the carried-on input
      hidden_states[i], with the teacher's output of layer i."""
    s, te, mask, g = sampled["s"], sampled["te"], sampled["mask"], sampled["g"]
    parts = {k: v.detach() for k, v in distillation(s, te, mask, LossWeights()).items()}
    m = mask.double()
    att_all = []
    for i in range(len(s.attentions)):
        err = (s.attentions[i].detach().double() - te.attentions[i].double()) ** 2  # (B, h, T, T)
        pair = (m[:, None, :, None] * m[:, None, None, :]).expand_as(err)
        att_all.append(float((err * pair).sum() / pair.sum()))
    assert min(att_all) > 1e-3  # attention maps that differ from the teacher's
    assert float(parts["kd_attention"]) == pytest.approx(sum(att_all) / len(att_all), rel=1e-5)
    # the closed (row, layer) pairs count: giving them the teacher's attention lowers kd_attention, where
    # an attention KD masked by the gates would not move
    closed = [(r, i) for r, i in (g == 0).nonzero().tolist()]
    atts = [a.detach().clone() for a in s.attentions]
    for r, i in closed:
        atts[i][r] = te.attentions[i][r]
    fixed = distillation(replace(s, attentions=atts), te, mask, LossWeights())["kd_attention"]
    assert float(fixed) < float(parts["kd_attention"]) - 0.01
    hid = []
    for i in range(1, len(s.hidden_states)):
        err = ((s.hidden_states[i].detach().double() - te.hidden_states[i].double()) ** 2).sum(-1)  # (B, T)
        hid.append(float((err * m).sum() / (m.sum() * err.new_tensor(s.hidden_states[i].shape[-1]))))
    assert float(parts["kd_hidden"]) == pytest.approx(sum(hid) / len(hid), rel=1e-5)
    # the attention KD of a row whose gate is closed at layer i trains layer i (through that layer's own
    # attention: nothing downstream of a closed layer depends on its weights on that row)
    r, i = closed[0]
    student = sampled["student"]
    again = student(sampled["ids"], mask, sampled["tt"], gates="sample", output_attentions=True,
                    generator=torch.Generator().manual_seed(5))  # the same samples as `s`
    assert torch.equal(again.gates.detach(), g)

    def row(out):
        return replace(out, logits=out.logits[r:r + 1], attentions=[a[r:r + 1] for a in out.attentions],
                       hidden_states=None)

    student.zero_grad(set_to_none=True)
    only_attention = LossWeights(kd_logits=0.0, kd_hidden=0.0, kd_embedding=0.0)
    distillation(row(again), row(te), mask[r:r + 1], only_attention)["kd_attention"].backward()
    query = dict(student.layers[i].named_parameters())["layer.attention.self.query.weight"]
    assert query.grad is not None and float(query.grad.abs().max()) > 1e-6
    student.zero_grad(set_to_none=True)

# --------------------------------------------------------------------------------------------- budget penalty


def test_budget_penalty_value():
    g = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert float(budget_penalty(g, 0.5)) == pytest.approx((4 / 6 - 0.5) ** 2)
    assert float(budget_penalty(g, 4 / 6)) == pytest.approx(0.0, abs=1e-12)
    assert float(budget_penalty(torch.ones(4, 6), 0.0)) == pytest.approx(1.0)


def test_a_fixed_subset_meets_the_mean_penalty_but_not_the_per_layer_one():
    """Every row on layers 1 and 2 of 6 (a static route) has mean gate 1/3: no "mean" penalty at s = 1/3, but
    the per-layer rule wants each layer on a third of the rows; rows split over three disjoint pairs meet both."""
    static = torch.tensor([[1.0, 1.0, 0, 0, 0, 0]]).repeat(6, 1)
    assert float(budget_penalty(static, 1 / 3)) == pytest.approx(0.0, abs=1e-12)
    assert float(budget_penalty(static, 1 / 3, "per-layer")) == pytest.approx((2 * (2 / 3) ** 2 + 4 * (1 / 3) ** 2) / 6)
    spread = torch.tensor([[1.0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]).repeat(2, 1)
    assert float(budget_penalty(spread, 1 / 3, "per-layer")) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown gate penalty"):
        budget_penalty(static, 0.5, "median")


def test_the_per_layer_penalty_splits_rows_that_a_gate_can_tell_apart():
    """One linear gate per layer over a 1-d feature that separates two groups of rows, trained through ReinMax on
    the penalty alone at s = 1/2: with "per-layer" each layer ends up open for about half the rows, so the
    routes differ between rows; "mean" is met by opening some layers for all and closing others."""
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 64).unsqueeze(1)  # (B, 1)
    for rule in ("per-layer", "mean"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 2) * 0.1)  # per layer: open-logit = w0 * x + w1, closed = 0
        opt = torch.optim.SGD([w], lr=5.0)
        with torch.no_grad():
            w[:, 1] = torch.tensor([3.0, 3.0, -3.0, -3.0])  # two layers always open, two always closed
        for _ in range(600):
            open_logit = x * w[:, 0] + w[:, 1]  # (B, L)
            logits = torch.stack([torch.zeros_like(open_logit), open_logit], dim=-1)
            g = reinmax(logits, 1.0, gen)[..., 1]
            opt.zero_grad()
            budget_penalty(g, 0.5, rule).backward()
            opt.step()
        rates = (x * w[:, 0] + w[:, 1] > 0).float().mean(0).detach()  # (L,) share of rows each layer opens for
        if rule == "per-layer":
            assert ((rates - 0.5).abs() < 0.2).all(), rates
        else:
            assert float(rates.mean()) == pytest.approx(0.5, abs=0.15) and float((rates - 0.5).abs().min()) > 0.3


@pytest.mark.parametrize("start, target", [(2.0, 0.3), (-2.0, 0.9)])
def test_budget_penalty_moves_the_mean_gate_to_its_target(start, target):
    """Gate logits (per layer, shared by 64 rows) trained on the penalty alone, through ReinMax samples: the
    open probability goes from sigmoid(start) to near the target (seeds 0-5 end within 0.015 of it)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.nn.Parameter(torch.tensor([0.0, start]).repeat(4, 1))  # (L, 2): closed, open
    opt = torch.optim.SGD([logits], lr=5.0)
    p0 = float(logits.detach().softmax(-1)[:, 1].mean())
    assert abs(p0 - target) > 0.55
    for _ in range(40):
        g = reinmax(logits.expand(64, 4, 2), 1.0, gen)[..., 1]  # (B, L) hard 0/1
        opt.zero_grad()
        budget_penalty(g, target).backward()
        opt.step()
    p = float(logits.detach().softmax(-1)[:, 1].mean())
    assert abs(p - target) < 0.1, (p0, p, target)


# --------------------------------------------------------------------------------------------- stage invariants


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """A tiny teacher, then train_hadskip with --teacher (stage II, stage III k = 3, 2), with spies on the
    fresh student (its gates before stage II) and on every stage III step's teacher argument."""
    from hadskip.testing import tiny_backbone_dir, tiny_task_dir

    root = tmp_path_factory.mktemp("losses")
    backbone = tiny_backbone_dir(root / "backbone")
    task = tiny_task_dir(root / "task", n_train=32, n_eval=8)
    teacher_dir = root / "teacher"
    train.finetune(train.TrainConfig(backbone=str(backbone), task=str(task), out=str(teacher_dir), max_len=32,
                                     batch_size=16, epochs=1, lr=1e-3, progress=False))
    sha_before = _sha256(teacher_dir / "model.safetensors")

    spy = {"fresh_gates": [], "teachers": [], "first": None, "last": None, "frozen": [], "training": [],
           "shared": []}
    fresh_student, joint_step = train._Stages.fresh_student, train._joint_step

    def fresh_spy(self):
        m = fresh_student(self)
        spy["fresh_gates"].append({k: v.detach().clone() for k, v in m.gates.state_dict().items()})
        return m

    def step_spy(student, teacher, weights, target, batch, **kw):
        state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        spy["first"] = spy["first"] or state
        spy["last"] = state
        spy["teachers"].append(teacher)
        spy["frozen"].append(not any(p.requires_grad for p in teacher.parameters()))
        spy["training"].append(teacher.training)
        spy["shared"].append(bool({p.data_ptr() for p in teacher.parameters()}
                                  & {p.data_ptr() for p in student.parameters()}))
        return joint_step(student, teacher, weights, target, batch, **kw)

    out = root / "hadskip"
    cfg = train.HadSkipConfig(backbone=str(backbone), task=str(task), out=str(out), teacher=str(teacher_dir),
                              budget=2.0, max_len=32, batch_size=16, stage2_epochs=1, phase_epochs=1,
                              final_phase_epochs=1, progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train._Stages, "fresh_student", fresh_spy)
        mp.setattr(train, "_joint_step", step_spy)
        train.train_hadskip(cfg)
    return {"teacher_dir": teacher_dir, "out": out, "sha_before": sha_before, "spy": spy}


def test_stage2_trains_the_gates_only(stages):
    from safetensors.torch import load_file

    teacher = load_file(str(stages["teacher_dir"] / "model.safetensors"))
    stage2 = load_file(str(stages["out"] / "stages" / "stage2" / "model.safetensors"))
    assert set(teacher) == set(stage2)
    backbone = [k for k in stage2 if not k.startswith("gates.")]
    assert len(backbone) > 20 and any(k.startswith("layers.") for k in backbone) and "head.out.weight" in backbone
    for k in backbone:
        assert stage2[k].dtype == teacher[k].dtype and torch.equal(stage2[k], teacher[k]), k
    fresh = stages["spy"]["fresh_gates"]
    assert len(fresh) == 1  # stage II's student; stage III starts from stage II's run dir
    changed = [k for k, v in fresh[0].items() if not torch.equal(stage2["gates." + k], v)]
    assert changed and any(k.endswith("fc1.weight") for k in changed), changed


def test_stage3_never_changes_the_teacher(stages):
    from safetensors.torch import load_file

    spy = stages["spy"]
    assert _sha256(stages["teacher_dir"] / "model.safetensors") == stages["sha_before"]
    assert len(spy["teachers"]) >= 4  # two phases (k = 3, 2) of two steps each
    assert all(t is spy["teachers"][0] for t in spy["teachers"])
    assert all(spy["frozen"]) and not any(spy["training"]) and not any(spy["shared"])
    on_disk = load_file(str(stages["teacher_dir"] / "model.safetensors"))
    final = {k: v.detach() for k, v in spy["teachers"][-1].state_dict().items()}
    for state in (spy["first"], spy["last"], final):
        assert set(state) == set(on_disk)
        for k, v in on_disk.items():
            assert torch.equal(state[k].cpu(), v), k


def test_stage3_trained_the_student(stages):
    """The spy saw a working stage III: the final student's backbone moved away from the teacher's."""
    from safetensors.torch import load_file

    teacher = load_file(str(stages["teacher_dir"] / "model.safetensors"))
    final = load_file(str(stages["out"] / "model.safetensors"))
    moved = [k for k in teacher if not k.startswith("gates.") and not torch.equal(teacher[k], final[k])]
    assert any(k.startswith("layers.") for k in moved)
    assert math.isfinite(sum(float(v.float().abs().sum()) for v in final.values()))
