"""Static int8's data: the run's texts routed through the fp32 units by the runtime's own loop, recording what
reaches every layer graph (the calibration set), and each int8 layer checked against its fp32 graph on the
hidden states dev rows bring to it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hadskip.export.int8_config import Int8Config, TextSetup, first_line
from hadskip.export.spec import ExportError


def _subset(n: int, k: int | None, seed: int = 0):
    """A fixed random subset of range(n) of at most k indices, sorted."""
    import numpy as np

    if k is None or n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def _split_inputs(task: dict, split: str, k: int | None):
    """(inputs (texts or pairs), labels, rows in the split) of a fixed subset of the run's task split."""
    from hadskip.modeling.checkpoint import load_run_task

    s = load_run_task(task).split(split)
    inputs = list(zip(s.texts, s.pairs, strict=True)) if s.pairs is not None else list(s.texts)
    keep = _subset(len(inputs), k)
    return [inputs[i] for i in keep], s.labels[keep], len(inputs)


def load_split(task: dict, split: str, k: int | None, why: str):
    """_split_inputs, or ExportError in one line when the run's task cannot be loaded here."""
    from hadskip.errors import HadSkipError

    try:
        out = _split_inputs(task, split, k)
    except (HadSkipError, OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{why} needs the run's {split} split, and the task {task.get('name')!r} cannot be "
                          f"loaded here ({first_line(exc)})") from exc
    if not out[0]:
        raise ExportError(f"{why} needs the run's {split} split, and it is empty")
    return out


class _Recorder:
    """The fp32 units of the model dir being built, routed by the runtime's own loop, keeping every input a layer
    graph gets (per layer: a list of {input name: array}) and the whole-model inputs of each batch."""

    def __init__(self, tmp: Path, specs, setup: TextSetup, threads: int | None = None):
        from hadskip.runtime.backends.ort import OrtCpuBackend, open_session, session_options
        from hadskip.runtime.text import TextEncoder

        class Backend(OrtCpuBackend):
            def __init__(self, sessions, num_layers, seen):
                self.sessions, self.num_layers, self.seen = sessions, num_layers, seen
                self.inputs = {k: {i.name for i in s.get_inputs()} for k, s in sessions.items()}

            def run_layer(self, i, h, attention_mask):
                names = self.inputs[("layer", i)]
                feed = {"hidden": h, "attention_mask": attention_mask}
                self.seen[i].append({k: v.copy() for k, v in feed.items() if k in names})
                return super().run_layer(i, h, attention_mask)

        so = session_options(threads)
        kinds = {"embeddings": "embeddings", "head": "head", "layer": "layer", "gate": "gate"}
        count: Counter = Counter()
        sessions = {}
        for spec in specs:
            kind = kinds[spec.kind]
            i = count[kind]
            count[kind] += 1
            sessions[(kind, i if kind in ("layer", "gate") else 0)] = open_session(tmp / spec.path, so,
                                                                                    ["CPUExecutionProvider"])
        self.seen: dict[int, list[dict]] = {i: [] for i in range(setup.num_layers)}
        self.backend = Backend(sessions, setup.num_layers, self.seen)
        self.encoder = TextEncoder(tmp / "tokenizer.json", setup.max_seq_len, setup.pad_token_id,
                                   not setup.token_types)
        self.model_feeds: list[dict] = []

    def run(self, inputs, batch_size: int = 32, every_gate_open: bool = True) -> None:
        import numpy as np

        from hadskip.runtime.router import route

        enc = self.encoder.encode(inputs)
        order = np.argsort(enc.lengths, kind="stable")  # like Runtime.predict: little padding
        for start in range(0, len(order), batch_size):
            ids, mask, tt = self.encoder.pad_batch(enc, order[start:start + batch_size])
            t = max(1, int(mask.sum(axis=1).max()))
            ids, mask, tt = ids[:, :t], mask[:, :t], tt[:, :t]
            self.model_feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": tt})
            route(self.backend, ids, mask, tt)  # the run's gates at offset 0
            if every_gate_open:
                route(self.backend, ids, mask, tt, forced=np.ones((len(ids), self.backend.num_layers), bool))


def calibrate(tmp: Path, specs, setup: TextSetup, config: Int8Config) -> tuple[_Recorder, dict]:
    inputs, _, of = load_split(setup.task, config.calibration_split, config.calibration_rows,
                                "static int8 calibration")
    rec = _Recorder(tmp, specs, setup)
    rec.run(inputs)
    info = {"split": config.calibration_split, "rows": len(inputs), "of": of, "method": config.calibration,
            "paths": "routed (the run's gates at offset 0) and every gate open",
            "layer_inputs": {f"layer_{i:02d}": {"rows": int(sum(len(f["hidden"]) for f in feeds)),
                                                "tokens": int(sum(f["attention_mask"].sum() for f in feeds))}
                             for i, feeds in rec.seen.items()}}
    if config.calibration == "percentile":
        info["percentile"] = config.percentile
    return rec, info


def layer_check(tmp: Path, ref: Path, specs, setup: TextSetup, config: Int8Config) -> dict[str, dict]:
    """Each int8 layer graph vs its fp32 graph on the hidden states dev rows bring to it (real tokens only):
    {layer: {rel_rms, max_abs_diff, max_abs_ref}}. Raises ExportError on a non-finite output."""
    import numpy as np

    from hadskip.runtime.backends.ort import open_session, session_options

    try:
        inputs, _, _ = load_split(setup.task, config.split, config.layer_check_rows, "the int8 layer check")
    except ExportError:
        return {}  # said by check_on_dev, which needs the same split
    rec = _Recorder(ref, specs, setup)  # fp32 graphs: scratch/fp32 holds the layers, tmp the rest
    rec.run(inputs)  # routed and every gate open: every layer gets checked
    so = session_options()
    out = {}
    for i, spec in enumerate([s for s in specs if s.kind == "layer"]):
        if not rec.seen[i]:
            out[spec.name] = {"rows": 0}
            continue
        s32, s8 = (open_session(d / spec.path, so, ["CPUExecutionProvider"]) for d in (ref, tmp))
        se = ss = 0.0
        diff = top = 0.0
        rows = 0
        for feed in rec.seen[i]:
            a, b = s32.run(None, feed)[0], s8.run(None, feed)[0]
            real = feed["attention_mask"].astype(bool) if "attention_mask" in feed else np.ones(a.shape[:2], bool)
            a, b = a[real].astype(np.float64), b[real].astype(np.float64)
            if not np.isfinite(b).all():
                raise ExportError(f"int8 {spec.name} gives non-finite values on {config.split} hidden states")
            se += float(((a - b) ** 2).sum())
            ss += float((a ** 2).sum())
            diff, top = max(diff, float(np.abs(a - b).max())), max(top, float(np.abs(a).max()))
            rows += len(feed["hidden"])
        out[spec.name] = {"rows": rows, "rel_rms": round((se / ss) ** 0.5 if ss else 0.0, 6),
                          "max_abs_diff": round(diff, 6), "max_abs_ref": round(top, 6)}
    return out
