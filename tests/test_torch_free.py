"""`hadskip.runtime` (and `hadskip predict`) work where torch and transformers cannot be imported.

A subprocess installs a meta-path finder that refuses torch and transformers, then loads a model dir
prepared here beforehand, predicts, runs the CLI, and checks which heavy modules got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_runtime_support import cached_model

SCRIPT = r"""
import importlib.abc, json, sys

BLOCKED = ("torch", "transformers", "tensorrt", "optimum")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())

import hadskip.runtime
from hadskip.runtime import Runtime
from hadskip.runtime import bench, jsonl  # noqa: F401  (the rest of the package imports cleanly too)
from hadskip.runtime.backends import device, memory, ort  # noqa: F401
import hadskip.triton  # noqa: F401  (the Triton repo writer and launcher too)
from hadskip.errors import MissingExtraError

model = sys.argv[1]
rt = Runtime.load(model)
preds = rt.predict(["a good movie", ("the plot", "was dull"), "fun " * 100], batch_size=2)
out = {"labels": preds.labels, "layers": preds.layers, "truncated": preds.truncated.tolist()}
import hadskip
with hadskip.pipeline(model) as pipe:  # the pipeline call is torch-free too
    out["pipe"] = pipe(["a good movie", {"text": "the plot", "text_pair": "was dull"}], top_k=None)
try:
    Runtime.load(model, backend="torch")
except MissingExtraError as exc:
    out["torch_error"] = str(exc)
try:
    Runtime.load(model, backend="trt")
except MissingExtraError as exc:
    out["trt_error"] = str(exc)
from hadskip.cli.main import main
out["cli"] = main(["predict", model, "-i", sys.argv[2], "-o", sys.argv[3], "--quiet"])
report = bench.run_bench(model, batches=[1], seqs=[4], repeats=1, warmup=0, ks=[0])
out["bench_rows"] = len(report.rows)
out["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


def test_runtime_without_torch(tmp_path_factory, tmp_path):
    _, model = cached_model(tmp_path_factory, "bert", 0)
    src, dst = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("fun film\nnot good\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(src), str(dst)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    assert len(out["labels"]) == 3 and out["truncated"] == [False, False, True]
    assert [[d["label"] for d in answer][:1] for answer in out["pipe"]] == [[out["labels"][0]], [out["labels"][1]]]
    assert "hadskip[train]" in out["torch_error"]
    assert "hadskip[trt]" in out["trt_error"]
    assert out["cli"] == 0 and len(dst.read_text().splitlines()) == 2
    assert out["bench_rows"] == 4
