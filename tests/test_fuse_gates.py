"""--fuse-gates: the gates inside the graph before them; routing on them equals routing on separate gate graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from test_runtime_support import padded_batch, reference

from hadskip.export import export_model
from hadskip.runtime import Runtime
from hadskip.runtime.manifest import ManifestError, load_manifest, write_manifest
from hadskip.testing import tiny_run

OUTPUT = "gate_logits_next"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    run = tiny_run(root / "run", "roberta", seed=1)  # roberta: the embeddings graph does not use the mask
    export_model(run, root / "separate", progress=False, validate=False)
    export_model(run, root / "fused", fuse_gates=True, max_batch=4, progress=False)
    return run, root / "separate", root / "fused"


def outputs(path) -> list[str]:
    return [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]


def test_fused_dir_layout_and_manifest(dirs):
    _, _, fused = dirs
    m = load_manifest(fused)
    assert m.units["gate_form"] == "fused" and m.export["fuse_gates"] is True
    assert outputs(fused / m.units["embeddings"]) == ["hidden", OUTPUT]
    for i, rel in enumerate(m.units["layers"]):
        want = ["hidden_out", OUTPUT] if i < m.num_layers - 1 else ["hidden_out"]
        assert outputs(fused / rel) == want, rel
    assert all((fused / g).is_file() for g in m.units["gates"])  # kept for the backends that do not fuse
    assert {f"gates-fused/layer_{i:02d}" for i in range(m.num_layers - 1)} | {"gates-fused/embeddings"} \
        <= set(m.validation)


def test_routing_on_fused_gates_equals_separate_gates_and_pytorch(dirs):
    run, separate, fused = dirs
    a, b = Runtime.load(separate), Runtime.load(fused)
    assert type(b.backend).__name__ == "OrtCpuFusedBackend" and type(a.backend).__name__ == "OrtCpuBackend"
    vocab = load_manifest(fused).backbone["vocab_size"]
    ids, mask, tt = padded_batch([7, 3, 12, 1, 9, 12, 5, 2], vocab, seed=4)
    ra, rb = a.run_batch(ids, mask, tt), b.run_batch(ids, mask, tt)
    ref_logits, ref_gates = reference(run, ids, mask, tt)
    assert np.array_equal(rb.gates, ra.gates) and np.array_equal(rb.gates, ref_gates)
    assert 0 < rb.gates.mean() < 1  # rows take different paths: gather/scatter carry the logits along
    assert np.abs(rb.logits - ra.logits).max() <= 1e-5 and np.abs(rb.logits - ref_logits).max() <= 1e-4
    forced = np.array([[1, 0, 1]] * 8)
    assert np.array_equal(b.run_batch(ids, mask, tt, forced=forced).gates, forced.astype(bool))


def test_fused_gates_call_no_gate_session(dirs):
    _, _, fused = dirs
    rt = Runtime.load(fused)
    calls: list[tuple[str, int]] = []
    rt.backend.sessions = {k: _Counting(s, k, calls) for k, s in rt.backend.sessions.items()}
    out = rt.predict(["a good movie", "bad", "the plot was not fun at all"], batch_size=3)
    assert not [k for k in calls if k[0] == "gate"]
    assert not [k for k in rt.backend.sessions if k[0] == "gate"]  # not even opened (memory, load time)
    assert len(calls) == 2 + len({i for row in out.layers for i in row})  # embeddings + head + each layer run


class _Counting:
    def __init__(self, session, key, calls):
        self.session, self.key, self.calls = session, key, calls

    def run(self, *args, **kwargs):
        self.calls.append(self.key)
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_bad_gate_form_and_missing_output_are_refused(dirs, tmp_path):
    import shutil

    _, separate, _ = dirs
    d = tmp_path / "m"
    shutil.copytree(separate, d)
    m = load_manifest(d)
    m.units["gate_form"] = "sideways"
    write_manifest(d, m)
    with pytest.raises(ManifestError, match="gate_form"):
        load_manifest(d)
    m.units["gate_form"] = "fused"  # the manifest promises outputs the separate graphs do not have
    write_manifest(d, m)
    from hadskip.errors import HadSkipError

    with pytest.raises(HadSkipError, match=OUTPUT):
        Runtime.load(d)


def test_the_carried_logits_are_the_gates_on_each_rows_current_hidden(dirs):
    """After any mix of run/skip per row, column j of the carried logits equals gate j's graph on the row's h."""
    _, separate, fused = dirs
    a, b = Runtime.load(separate).backend, Runtime.load(fused).backend
    n = b.num_layers
    ids, mask, tt = padded_batch([6, 11, 2, 9, 11], load_manifest(fused).backbone["vocab_size"], seed=9)
    h = b.run_embeddings(ids, mask, tt)
    for i, rows in enumerate(([0, 2, 3], [1, 2], None)):
        for j in range(i, n):
            want = a.sessions[("gate", j)].run(None, {"hidden": h.h, "attention_mask": mask})[0]  # (B, 2)
            assert np.abs(h.logits[:, j] - want).max() <= 1e-5, (i, j)
        if rows is None:
            h = b.run_layer(i, h, mask)
        else:
            t = int(mask[rows].sum(axis=1).max())
            h = b.scatter(h, np.array(rows), b.run_layer(i, b.gather(h, np.array(rows), t), mask[rows, :t]))
