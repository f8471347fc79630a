"""Adversarial CLI suite: every command with bad input ends in exit status 2 and exactly one `error:` line.

Missing, empty, binary and huge files, bad numbers, bad paths, bad JSON, wrong model and run dirs. Each case
runs `hadskip.cli.main.main` in-process (a traceback would escape it and fail the test); serve-local runs in a
subprocess so that a regression cannot leave a server running. Also here: missing extras name the extra
(subprocess with torch made unimportable) and a CLI module that fails to import is not skipped silently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_runtime_support import cached_model

from hadskip.cli.main import COMMANDS, main
from hadskip.testing import tiny_backbone_dir, tiny_run, tiny_task_dir


class Env:
    def __init__(self, root: Path, model: Path, run: Path, task: Path, backbone: Path):
        self.root, self.model, self.run, self.task, self.backbone = root, model, run, task, backbone
        self.txt = self.put("in.txt", "a good movie\nbad\n")
        self.jsonl = self.put("in.jsonl", '{"text": "a good movie"}\n')

    def put(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def model_copy(self, name: str, edit) -> str:
        dst = self.root / name
        if not dst.exists():
            shutil.copytree(self.model, dst)
            edit(dst)
        return str(dst)

    def task_copy(self, name: str, split: str, content: str | bytes) -> str:
        dst = self.root / name
        if not dst.exists():
            shutil.copytree(self.task, dst)
            (dst / f"{split}.csv").write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(dst)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    _, model = cached_model(tmp_path_factory, "bert", 0)
    return Env(root, model, tiny_run(root / "run", "bert"), tiny_task_dir(root / "task", n_train=8, n_eval=4),
               tiny_backbone_dir(root / "backbone", "bert"))


BINARY = bytes(range(128, 256)) * 64 + bytes(range(128)) * 64  # not UTF-8 from its first byte
NESTED = "[" * 100_000 + "]" * 100_000


def _predict(e: Env, content: str | bytes, suffix: str = ".jsonl", *extra: str) -> list[str]:
    return ["predict", str(e.model), "-i", e.put(f"case{abs(hash(content)) % 10**8}{suffix}", content), *extra]


def _gpt2(e: Env) -> str:
    (e.root / "gpt2").mkdir(exist_ok=True)
    return e.put("gpt2/config.json", json.dumps({"model_type": "gpt2"})).rsplit("/", 1)[0]


# (id, argv from the env, regex the one error line must match)
CASES = [
    # --- push (tests/test_hub.py has the round trips through a hub stand-in) ---
    ("push-no-model", lambda e: ["push", str(e.root / "nope"), "me/model"], r"model dir .* does not exist"),
    ("push-run-dir", lambda e: ["push", str(e.run), "me/model"], r"manifest\.json is missing"),
    ("push-bad-repo-id", lambda e: ["push", str(e.model), "me/../x"], r"is not a hub repo id"),
    ("push-bad-card", lambda e: ["push", str(e.model), "me/model", "--card", str(e.root / "nope.md")],
     r"--card .*choose auto, generated, none"),
    ("push-run-not-its-run", lambda e: ["push", str(e.model), "me/model", "--run", str(e.root / "nope")],
     r"--run .* is not a hadskip run dir"),
    ("predict-bad-hub-id", lambda e: ["predict", "me/a--b", "-i", e.txt], r"is not a hub repo id"),
    ("predict-revision-of-a-local-dir", lambda e: ["predict", str(e.model), "-i", e.txt, "--revision", "v1"],
     r"--revision v1 applies to a hub repo id"),
    # --- predict: files ---
    ("predict-no-model", lambda e: ["predict", str(e.root / "nope"), "-i", e.txt], r"model dir .* does not exist"),
    ("predict-model-is-file", lambda e: ["predict", e.txt, "-i", e.txt], r"(not a folder|does not exist|manifest)"),
    ("predict-empty-model-dir", lambda e: ["predict", str(e.root), "-i", e.txt], r"manifest"),
    ("predict-manifest-not-json", lambda e: ["predict", e.model_copy("m-json", lambda d: (d / "manifest.json")
                                                                     .write_text("{oops")), "-i", e.txt],
     r"manifest"),
    ("predict-manifest-binary-huge", lambda e: ["predict", e.model_copy("m-bin", lambda d: (d / "manifest.json")
                                                                        .write_bytes(BINARY * 300)), "-i", e.txt],
     r"manifest"),
    ("predict-graph-missing", lambda e: ["predict", e.model_copy("m-head", lambda d: (d / "head.onnx").unlink()),
                                         "-i", e.txt], r"head\.onnx"),
    ("predict-graph-corrupt", lambda e: ["predict", e.model_copy("m-corrupt", lambda d: (d / "head.onnx")
                                                                 .write_bytes(BINARY)), "-i", e.txt],
     r"head\.onnx"),
    ("predict-run-dir-not-model", lambda e: ["predict", str(e.run), "-i", e.txt], r"manifest"),
    ("predict-no-input", lambda e: ["predict", str(e.model), "-i", str(e.root / "nope.txt")], r"does not exist"),
    ("predict-input-is-folder", lambda e: ["predict", str(e.model), "-i", str(e.root)], r"is a folder"),
    ("predict-binary-txt", lambda e: _predict(e, BINARY, ".txt"), r"line 1 is not UTF-8 text"),
    ("predict-binary-jsonl", lambda e: _predict(e, BINARY, ".jsonl"), r"line 1 is not UTF-8 text"),
    ("predict-binary-auto", lambda e: _predict(e, b"ok\n" + BINARY, ".dat"), r"line 2 is not UTF-8 text"),
    ("predict-utf16", lambda e: _predict(e, "a good movie\n".encode("utf-16"), ".txt"), r"not UTF-8 text"),
    ("predict-nul-bytes", lambda e: _predict(e, b"fine\nfi\x00ne\n", ".txt"), r"line 2 holds a NUL byte"),
    ("predict-bad-json", lambda e: _predict(e, '{"text": "a"}\n{"text": \n'), r"line 2 is not valid JSON"),
    ("predict-lone-surrogate", lambda e: _predict(e, '{"text": "\\ud800"}\n'), r'"text" is not valid Unicode'),
    ("predict-lone-surrogate-pair", lambda e: _predict(e, '{"text": "a", "text_pair": "x\\udfff"}\n'),
     r'"text_pair" is not valid Unicode'),
    ("predict-text-not-string", lambda e: _predict(e, '{"text": 5}\n'), r'"text" must be a string'),
    ("predict-no-text-field", lambda e: _predict(e, '{"txt": "a"}\n'), r'needs a string "text"'),
    ("predict-array-line", lambda e: _predict(e, '{"text": "a"}\n["a", "b"]\n'), r'line 2 needs a string "text"'),
    ("predict-huge-int", lambda e: _predict(e, '{"text": "a", "id": ' + "9" * 5000 + "}\n"),
     r"line 1 is not valid JSON"),
    ("predict-inf-id", lambda e: _predict(e, '{"text": "a", "id": 1e999}\n'), r'"id" cannot be written back'),
    ("predict-nan-id", lambda e: _predict(e, '{"text": "a", "id": NaN}\n'), r'"id" cannot be written back'),
    ("predict-deep-json", lambda e: _predict(e, '{"text": "a", "id": ' + NESTED + "}\n"),
     r"line 1 is not valid JSON"),
    ("predict-pair-wrong-type", lambda e: _predict(e, '{"text": "a", "text_pair": ["b"]}\n'),
     r'"text_pair" must be a string'),
    # --- predict: output and options ---
    ("predict-out-missing-folder", lambda e: ["predict", str(e.model), "-i", e.txt, "-o",
                                              str(e.root / "no" / "out.jsonl")], r"output folder .* does not exist"),
    ("predict-out-is-folder", lambda e: ["predict", str(e.model), "-i", e.txt, "-o", str(e.root)], r"is a folder"),
    ("predict-out-is-input", lambda e: ["predict", str(e.model), "-i", e.txt, "-o", e.txt], r"is the input file"),
    ("predict-batch-zero", lambda e: ["predict", str(e.model), "-i", e.txt, "--batch-size", "0"], r"batch-size"),
    ("predict-batch-huge", lambda e: ["predict", str(e.model), "-i", e.txt, "--batch-size", "9" * 20],
     r"batch-size"),
    ("predict-batch-text", lambda e: ["predict", str(e.model), "-i", e.txt, "--batch-size", "many"], r"batch-size"),
    ("predict-format", lambda e: ["predict", str(e.model), "-i", e.txt, "--format", "xml"], r"format must be one"),
    ("predict-backend", lambda e: ["predict", str(e.model), "-i", e.txt, "--backend", "tpu"], r"unknown backend"),
    ("predict-threads", lambda e: ["predict", str(e.model), "-i", e.txt, "--threads", "0"], r"--threads"),
    ("predict-threads-negative", lambda e: ["predict", str(e.model), "-i", e.txt, "--threads", "-1"], r"--threads"),
    ("predict-missing-input-option", lambda e: ["predict", str(e.model)], r"Missing option '--input'"),
    ("predict-unknown-option", lambda e: ["predict", str(e.model), "-i", e.txt, "--fast"], r"No such option"),
    # --- bench ---
    ("bench-batch-huge", lambda e: ["bench", str(e.model), "--batch", "99999999999999999999"], r"--batch values"),
    ("bench-batch-zero", lambda e: ["bench", str(e.model), "--batch", "0"], r"--batch values"),
    ("bench-input-missing", lambda e: ["bench", str(e.model), "--input", str(e.root / "nope.txt")], r"cannot read"),
    ("predict-max-layers-negative", lambda e: ["predict", str(e.model), "-i", e.txt, "--max-layers", "-1"],
     r"max_layers must be a whole number of layers within 0\.\."),
    ("bench-batch-text", lambda e: ["bench", str(e.model), "--batch", "1,x"], r"comma-separated integers"),
    ("bench-batch-empty", lambda e: ["bench", str(e.model), "--batch", ","], r"--batch is empty"),
    ("bench-seq-negative", lambda e: ["bench", str(e.model), "--seq", "-4"], r"--seq values"),
    ("bench-seq-beyond-model", lambda e: ["bench", str(e.model), "--seq", "999", "--quiet"], r"999"),
    ("bench-repeats-zero", lambda e: ["bench", str(e.model), "--repeats", "0"], r"--repeats"),
    ("bench-dtype-not-torch", lambda e: ["bench", str(e.model), "--dtype", "bf16", "--quiet"],
     r"dtype bf16 is for the torch backend; ort-cpu runs the model dir's own precision"),
    ("predict-dtype-unknown", lambda e: ["predict", str(e.run), "-i", e.txt, "--backend", "torch", "--dtype", "fp64"],
     r"dtype must be one of fp32, fp16, bf16, got 'fp64'"),
    ("predict-dtype-fp16-cpu", lambda e: ["predict", str(e.run), "-i", e.txt, "--backend", "torch", "--device", "cpu",
                                          "--dtype", "fp16"], r"dtype fp16 needs a CUDA device"),
    ("bench-repeats-text", lambda e: ["bench", str(e.model), "--repeats", "abc"], r"--repeats"),
    ("bench-warmup-negative", lambda e: ["bench", str(e.model), "--warmup", "-1"], r"--warmup"),
    ("bench-k-beyond-layers", lambda e: ["bench", str(e.model), "--k", "99", "--quiet"], r"forced K"),
    ("bench-k-negative", lambda e: ["bench", str(e.model), "--k", "-1"], r"--k values"),
    ("bench-device-id", lambda e: ["bench", str(e.model), "--device-id", "-1"], r"--device-id"),
    ("bench-no-model", lambda e: ["bench", str(e.root / "nope")], r"does not exist"),
    # --- export ---
    ("export-no-run", lambda e: ["export", str(e.root / "nope"), "-o", str(e.root / "x1")], r"run\.json"),
    ("export-model-dir-as-run", lambda e: ["export", str(e.model), "-o", str(e.root / "x2")], r"run\.json"),
    ("export-run-json-broken", lambda e: ["export", e.put("badrun/run.json", "{").rsplit("/", 1)[0], "-o",
                                          str(e.root / "x3")], r"not valid JSON"),
    ("export-opset", lambda e: ["export", str(e.run), "-o", str(e.root / "x4"), "--opset", "13"], r"opset 13"),
    ("export-engine", lambda e: ["export", str(e.run), "-o", str(e.root / "x5"), "--engine", "tflite"], r"engine"),
    ("export-max-batch", lambda e: ["export", str(e.run), "-o", str(e.root / "x6"), "--max-batch", "lots"],
     r"max-batch"),
    ("export-no-out", lambda e: ["export", str(e.run)], r"Missing option '--out'"),
    ("export-int8-all-alone", lambda e: ["export", str(e.run), "-o", str(e.root / "x7"), "--int8-all"],
     r"--int8-all goes with --quantize int8"),
    ("export-label-names-count", lambda e: ["export", str(e.run), "-o", str(e.root / "x8"), "--label-names", "a,b,c"],
     r"gives 3 names but the model has 2 labels"),
    ("export-label-names-repeated", lambda e: ["export", str(e.run), "-o", str(e.root / "x9"), "--label-names",
                                               "a,a"], r"'a' appears twice"),
    ("export-label-names-empty", lambda e: ["export", str(e.run), "-o", str(e.root / "x10"), "--label-names",
                                            "a,"], r"must be non-empty"),
    # --- eval ---
    ("eval-missing", lambda e: ["eval", str(e.root / "nope")], r"neither a run dir"),
    ("eval-plain-folder", lambda e: ["eval", str(e.task)], r"neither a run dir"),
    ("eval-bad-split", lambda e: ["eval", str(e.model), "--split", "holdout", "--task", str(e.task),
                                  "--no-plots"], r"unknown split 'holdout'"),
    ("eval-bad-task", lambda e: ["eval", str(e.model), "--task", str(e.root / "nope"), "--no-plots"],
     r"task folder not found"),
    ("eval-batch-text", lambda e: ["eval", str(e.model), "--batch-size", "x"], r"batch-size"),
    ("eval-budget-no-dial", lambda e: ["eval", str(e.model), "--budget", "2", "--no-plots"], r"no budget dial"),
    ("eval-budget-text", lambda e: ["eval", str(e.model), "--budget", "lots"], r"--budget"),
    # --- dial (tests/test_dial.py has the rest) ---
    ("dial-missing", lambda e: ["dial", str(e.root / "nope")], r"not a hadskip run dir"),
    ("dial-model-dir", lambda e: ["dial", str(e.model)], r"not a hadskip run dir"),
    ("dial-bad-targets", lambda e: ["dial", str(e.run), "--targets", "1,,two"], r"--targets takes numbers"),
    ("dial-target-beyond-layers", lambda e: ["dial", str(e.run), "--targets", "1e400"], r"target inf is outside"),
    ("predict-budget-no-dial", lambda e: ["predict", str(e.model), "-i", e.txt, "--budget", "2"], r"no budget dial"),
    ("bench-budget-no-dial", lambda e: ["bench", str(e.model), "--budget", "2"], r"no budget dial"),
    # --- finetune / train / compare ---
    ("finetune-no-backbone", lambda e: ["finetune", "--backbone", str(e.root / "nope"), "--out",
                                        str(e.root / "f1")], r"backbone path .* does not exist"),
    ("finetune-backbone-no-config", lambda e: ["finetune", "--backbone", str(e.task), "--out", str(e.root / "f2")],
     r"has no config\.json"),
    ("finetune-non-bert", lambda e: ["finetune", "--backbone", _gpt2(e), "--out", str(e.root / "f3")],
     r"is a 'gpt2' model"),
    ("finetune-max-len-small", lambda e: ["finetune", "--max-len", "4", "--out", str(e.root / "f4")],
     r"max_len >= 8"),
    ("finetune-epochs-zero", lambda e: ["finetune", "--epochs", "0", "--out", str(e.root / "f5")],
     r"--epochs must be > 0"),
    ("finetune-epochs-text", lambda e: ["finetune", "--epochs", "three"], r"--epochs"),
    ("finetune-backbone-tokenizer-only", lambda e: ["finetune", "--backbone", str(e.run / "tokenizer"), "--out",
                                                    str(e.root / "f6")], r"config\.json"),
    ("finetune-task-binary", lambda e: ["finetune", "--backbone", str(e.backbone), "--task",
                                        e.task_copy("t-bin", "train", BINARY), "--out", str(e.root / "f7")],
     r"cannot read .*train\.csv"),
    ("finetune-max-len-beyond-positions", lambda e: ["finetune", "--backbone", str(e.backbone), "--task",
                                                     str(e.task), "--max-len", "100000", "--out", str(e.root / "f8")],
     r"--max-len 100000 is more than backbone"),
    ("train-budget-zero", lambda e: ["train", "--budget", "0", "--out", str(e.root / "t1")], r"--budget must be > 0"),
    ("train-kd", lambda e: ["train", "--kd", "some", "--out", str(e.root / "t2")], r"--kd must be"),
    ("train-estimator", lambda e: ["train", "--estimator", "gumbel", "--out", str(e.root / "t3")], r"--estimator"),
    ("train-no-teacher", lambda e: ["train", "--teacher", str(e.root / "nope"), "--out", str(e.root / "t4")],
     r"not a hadskip run dir"),
    ("train-teacher-not-finetune", lambda e: ["train", "--teacher", str(e.run), "--out", str(e.root / "t5")],
     r"not a finetune run"),
    ("compare-budgets", lambda e: ["compare", "--budgets", "two"], r"--budgets takes numbers"),
    ("compare-hadskip-run", lambda e: ["compare", "--budgets", "2", "--hadskip", "2"], r"K=RUN_DIR"),
    ("compare-hadskip-other-budget", lambda e: ["compare", "--budgets", "2", "--hadskip", f"3={e.run}"],
     r"not in --budgets"),
    ("compare-negative-budget", lambda e: ["compare", "--budgets", "-1"], r"budgets must be > 0"),
    ("compare-kd", lambda e: ["compare", "--kd", "most"], r"--kd must be full, logits or none"),
    ("compare-baseline-epochs", lambda e: ["compare", "--baseline-epochs", "0"], r"--baseline-epochs must be > 0"),
    ("train-homotopy-start", lambda e: ["train", "--budget", "3", "--homotopy-start", "2", "--out",
                                        str(e.root / "t6")], r"--homotopy-start 2 is below the budget 3"),
    # --- data ---
    ("data-unknown-task", lambda e: ["data", "show", "imdb"], r"unknown task 'imdb'"),
    ("data-missing-folder", lambda e: ["data", "show", str(e.root / "nope/")], r"task folder not found"),
    ("data-binary-csv", lambda e: ["data", "show", e.task_copy("t-bin2", "train", BINARY)], r"cannot read"),
    ("data-real-labels", lambda e: ["data", "show", e.task_copy("t-real", "train", "text,label\na,0.5\nb,1.5\n")],
     r"regression is not supported"),
    ("data-no-label-column", lambda e: ["data", "show", e.task_copy("t-col", "dev", "text,stars\na,1\n")],
     r"no column 'label'"),
    ("data-max-examples", lambda e: ["data", "show", str(e.task), "--max-examples", "0"], r"max_examples"),
    ("data-no-subcommand-arg", lambda e: ["data", "show"], r"Missing argument"),
    # --- triton-repo ---
    ("triton-no-model", lambda e: ["triton-repo", str(e.root / "nope"), "--out", str(e.root / "tr1")],
     r"(does not exist|not found|no such)"),
    ("triton-empty-model-dir", lambda e: ["triton-repo", str(e.root), "--out", str(e.root / "tr2")], r"manifest"),
    ("triton-instances-zero", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr3"),
                                         "--instances", "0"], r"instances"),
    ("triton-max-batch-zero", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr4"),
                                         "--max-batch", "0"], r"max.batch"),
    ("triton-gpus-words", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr5"), "--backend",
                                     "ort-cuda", "--gpus", "a,b"], r"--gpus"),
    ("triton-backend-torch", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr6"), "--backend",
                                        "torch"], r"backend"),
    ("triton-out-under-file", lambda e: ["triton-repo", str(e.model), "--out", e.txt + "/repo"],
     r"(not a folder|exists|cannot|file)"),
    ("triton-python-env-missing", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr7"),
                                             "--python-env", "/nonexistent"],
     r"python_env /nonexistent does not exist"),
    ("triton-python-env-not-an-env", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr8"),
                                                "--python-env", str(e.task)], r"without bin/python"),
    ("triton-python-env-relative", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr9"),
                                              "--python-env", "env.tar.gz"], r"absolute path"),
    ("triton-threads-negative", lambda e: ["triton-repo", str(e.model), "--out", str(e.root / "tr10"),
                                           "--threads", "-1"], r"threads must be >= 1"),
    ("triton-out-inside-model", lambda e: ["triton-repo", str(e.model), "--out", str(e.model / "repo")],
     r"inside the model dir"),
    ("triton-out-is-model", lambda e: ["triton-repo", str(e.model), "--out", str(e.model)],
     r"inside the model dir"),
    ("triton-out-holds-model", lambda e: ["triton-repo", str(e.model), "--out", str(e.model.parent)],
     r"holds the model dir"),
    ("triton-out-run-dir", lambda e: ["triton-repo", str(e.model), "--out", str(e.run)], r"is a hadskip run dir"),
    ("eval-plots-inside-model", lambda e: ["eval", str(e.model), "--plots", str(e.model / "plots")],
     r"inside the model dir"),
    # --- the app ---
    ("unknown-command", lambda e: ["fit"], r"No such command 'fit'"),
    ("data-unknown-subcommand", lambda e: ["data", "list"], r"No such command 'list'"),
]


@pytest.mark.parametrize("case, argv, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(env, case, argv, pattern, capsys):
    import re

    args = argv(env)
    rc = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (args, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def test_the_table_covers_every_command():
    covered = {c[0].split("-")[0] for c in CASES}
    assert {c.name.split("-")[0] for c in COMMANDS} - {"serve"} <= covered  # serve-local: below


@pytest.mark.parametrize("args, pattern", [
    (["--max-batch", "0"], r"max_batch must be >= 1"),
    (["--port", "99999"], r"port"),
    (["--max-wait-ms", "soon"], r"--max-wait-ms"),
    (["--threads", "-1"], r"threads must be an integer >= 1, got -1"),
])
def test_serve_local_bad_input(env, args, pattern):
    import re

    proc = subprocess.run([sys.executable, "-m", "hadskip.cli", "serve-local", str(env.model), *args],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_serve_local_missing_model(env):
    proc = subprocess.run([sys.executable, "-m", "hadskip.cli", "serve-local", str(env.root / "nope"), "--port",
                           "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


# --- the command table and extras ---------------------------------------------------------------------------

BLOCK = r"""
import importlib.abc, sys

BLOCKED = tuple(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from hadskip.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _without(blocked: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK, blocked, *args], capture_output=True, text=True,
                          timeout=120)


def test_missing_extra_is_one_line_naming_it_and_help_still_works(tmp_path):
    no_torch = "torch,transformers,accelerate,safetensors,onnx,optimum"
    for cmd in (["train", "--out", str(tmp_path / "r")], ["finetune"], ["export", str(tmp_path), "-o", "x"],
                ["eval", str(tmp_path)]):
        proc = _without(no_torch, *cmd)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        extra = "export" if cmd[0] == "export" else "train"
        assert lines[0].startswith("error: torch is needed") and f"pip install 'hadskip[{extra}]'" in lines[0]
    assert not (tmp_path / "r").exists()
    proc = _without(no_torch, "train", "--help")
    assert proc.returncode == 0 and "hadskip[train]" in proc.stdout, proc.stderr
    proc = _without("fastapi", "serve-local", str(tmp_path))
    assert proc.returncode == 2 and "hadskip[serve]" in proc.stderr and "Traceback" not in proc.stderr
    proc = _without(no_torch, "data", "show", str(tmp_path / "nope"))  # needs no extra: its own error
    assert proc.returncode == 2 and "task folder not found" in proc.stderr


def test_a_cli_module_that_fails_to_import_is_not_skipped():
    # a broken install (here: cli/serve.py cannot be imported) must not quietly lose the command
    import re

    proc = _without("hadskip.cli.serve", "--help")
    assert proc.returncode != 0 and re.search(r"(Import|ModuleNotFound)Error: .*serve", proc.stderr), proc.stderr


def test_eval_of_a_model_dir_writes_nothing_into_it(env, capsys):
    """Issue 23: `hadskip eval MODEL` wrote MODEL/eval-test/, after which a re-export refused the model dir."""
    from test_export_safety import snapshot

    model = env.model_copy("m-eval", lambda d: None)
    before = snapshot(Path(model))
    assert main(["eval", model, "--split", "test", "--task", str(env.task), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plots"] is None
    assert snapshot(Path(model)) == before
    plots = env.root / "m-eval-plots"
    assert main(["eval", model, "--split", "test", "--task", str(env.task), "--plots", str(plots), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plots"] and snapshot(Path(model)) == before


def test_triton_force_never_replaces_a_folder_it_did_not_write(env, capsys):
    repo = env.root / "tr-force"
    (repo / "hadskip").mkdir(parents=True)
    (repo / "hadskip" / "mine.txt").write_text("mine")
    assert main(["triton-repo", str(env.model), "--out", str(repo), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a model this command wrote" in err[0]
    assert (repo / "hadskip" / "mine.txt").read_text() == "mine"
    assert main(["triton-repo", str(env.model), "--out", str(repo), "--name", "m2"]) == 0
    assert main(["triton-repo", str(env.model), "--out", str(repo), "--name", "m2", "--force"]) == 0
    (repo / "m2" / "2").mkdir()  # a version folder of the user's, beside ours: --force must not delete it
    (repo / "m2" / "2" / "model.onnx").write_bytes(b"theirs")
    capsys.readouterr()
    assert main(["triton-repo", str(env.model), "--out", str(repo), "--name", "m2", "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write (2/model.onnx)" in err[0]
    assert (repo / "m2" / "2" / "model.onnx").read_bytes() == b"theirs"
