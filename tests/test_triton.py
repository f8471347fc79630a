"""Triton: `hadskip triton-repo` writes a repository that a real tritonserver serves with the runtime's answers.

One tritonserver (from the nvidia-pytriton wheel, hadskip.triton.local) starts for the module on 127.0.0.1 and
serves three models of one repository: `hadskip` (the default config, small limits), `batched` (a dynamic
batcher that waits for 7 rows, so that requests of different shapes share one execution) and `broken` (a copy
whose graph no longer matches its sha256: it must fail to load while the others serve). Requests go through
tritonclient over HTTP and gRPC. The last test stops the server by its PID and checks that no process and no
/dev/shm region is left. Skipped, with the reason, only where the wheel (or the numpy<2 wheel the stub needs)
cannot be fetched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hadskip.cli.main import main
from hadskip.errors import HadSkipError
from hadskip.testing import tiny_sentences
from hadskip.triton.repo import MODEL_PY, TritonRepoConfig, config_pbtxt, write_repo

MAX_BATCH = 8
MAX_TEXT_BYTES = 4096


# -- the repository (no server) -------------------------------------------------------------------------------
def test_repo_layout_and_config(model_dir, tmp_path, rt):
    env_path = "$$TRITON_MODEL_DIRECTORY/env.tar.gz"
    target = write_repo(model_dir, tmp_path / "repo", TritonRepoConfig(max_batch=16, preferred_batch=(4, 16),
                                                                      threads=2, python_env=env_path))
    assert target == tmp_path / "repo" / "hadskip"
    text = (target / "config.pbtxt").read_text()
    for line in ('name: "hadskip"', 'backend: "python"', "max_batch_size: 16", "preferred_batch_size: [ 4, 16 ]",
                 "max_queue_delay_microseconds: 2000", "instance_group [ { count: 1 kind: KIND_CPU } ]",
                 f'dims: [ {len(rt.labels)} ] label_filename: "labels.txt"', f"dims: [ {rt.num_layers} ]",
                 'key: "HADSKIP_THREADS" value: { string_value: "2" }',
                 'key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" }',
                 'key: "HADSKIP_MODEL_DIR" value: { string_value: "model" }'):
        assert line in text, line
    assert (target / "labels.txt").read_text().splitlines() == rt.labels
    assert (target / "1" / "model.py").read_text() == MODEL_PY.read_text()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    copied = {p.relative_to(target / "1" / "model").as_posix() for p in (target / "1" / "model").rglob("*")
              if p.is_file()}
    assert copied == {"manifest.json", *manifest["files"]}
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["hadskip"]  # no temp folder left


def test_gpu_config_and_reference(model_dir, tmp_path):
    c = TritonRepoConfig(backend="ort-cuda", instances=2, gpus=(0, 1))
    text = config_pbtxt(c, 2, 3, "/abs/model")
    assert "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]" in text
    assert 'string_value: "ort-cuda"' in text and "EXECUTION_ENV_PATH" not in text
    target = write_repo(model_dir, tmp_path / "repo", TritonRepoConfig(copy=False))
    assert f'string_value: "{model_dir.resolve()}"' in (target / "config.pbtxt").read_text()
    assert not (target / "1" / "model").exists()


@pytest.mark.parametrize("bad", [
    {"name": "a/b"}, {"name": ""}, {"backend": "torch"}, {"instances": 0}, {"max_batch": 0},
    {"preferred_batch": (64,)}, {"preferred_batch": ()}, {"max_queue_delay_us": -1}, {"threads": 0},
    {"gpus": (0,)}, {"backend": "trt", "gpus": (-1,)}, {"python_env": 'a"b'}, {"max_text_bytes": 0},
])
def test_config_is_checked(bad):
    with pytest.raises(HadSkipError):
        TritonRepoConfig(**bad)


def test_existing_model_needs_force_and_trt_needs_engines(model_dir, tmp_path):
    write_repo(model_dir, tmp_path, TritonRepoConfig())
    with pytest.raises(HadSkipError, match="--force"):
        write_repo(model_dir, tmp_path, TritonRepoConfig())
    (tmp_path / "hadskip" / "stale").write_text("x")  # not written by write_repo: --force keeps it, and refuses
    with pytest.raises(HadSkipError, match=r"did not write \(stale\)"):
        write_repo(model_dir, tmp_path, TritonRepoConfig(max_batch=4), force=True)
    assert (tmp_path / "hadskip" / "stale").read_text() == "x"
    (tmp_path / "hadskip" / "stale").unlink()
    write_repo(model_dir, tmp_path, TritonRepoConfig(max_batch=4), force=True)
    assert "max_batch_size: 4" in (tmp_path / "hadskip" / "config.pbtxt").read_text()
    with pytest.raises(HadSkipError, match="TensorRT engines"):
        write_repo(model_dir, tmp_path / "r2", TritonRepoConfig(backend="trt"))


def test_corrupt_model_dir_is_refused_and_leaves_nothing(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "head.onnx").write_bytes(b"not a graph")
    with pytest.raises(HadSkipError, match="head.onnx"):
        write_repo(broken, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_cli(model_dir, tmp_path, capsys):
    assert main(["triton-repo", str(model_dir), "--out", str(tmp_path / "r"), "--json", "--max-batch", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["max_batch"] == 4 and Path(out["model"]) == (tmp_path / "r" / "hadskip").resolve()
    for args, needle in ((["--out", str(tmp_path / "r")], "exists"),
                         (["--out", str(tmp_path / "s"), "--preferred-batch", "64"], "preferred"),
                         (["--out", str(tmp_path / "s"), "--gpus", "0"], "gpus")):
        assert main(["triton-repo", str(model_dir), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert main(["triton-repo", str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 2
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


# -- a real tritonserver --------------------------------------------------------------------------------------
def _need_triton() -> None:
    """Skip, saying why, where the server wheel (or the numpy<2 wheel its stub needs) cannot be fetched."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'hadskip[triton]'")
    from hadskip.triton.local import install, stub_env

    try:
        install()
        stub_env()
    except HadSkipError as exc:
        if "could not fetch" in str(exc):
            pytest.skip(f"Triton server wheel unavailable: {exc}")
        raise


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    from hadskip.triton.local import LocalTriton

    _need_triton()
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_repo(model_dir, repo, TritonRepoConfig(max_batch=MAX_BATCH, max_text_bytes=MAX_TEXT_BYTES))
    write_repo(model_dir, repo, TritonRepoConfig(name="batched", max_batch=MAX_BATCH, preferred_batch=(7,),
                                                 max_queue_delay_us=10_000_000))
    write_repo(_with_dial(model_dir, repo.parent / "dialed"), repo, TritonRepoConfig(name="dialed",
                                                                                  max_batch=MAX_BATCH))
    broken = write_repo(model_dir, repo, TritonRepoConfig(name="broken"))
    (broken / "1" / "model" / "head.onnx").write_bytes(b"changed after the repository was written")
    srv = LocalTriton(repo, args=("--exit-on-error=false", "--strict-readiness=false"))
    srv.start()
    try:
        yield srv
    finally:
        _close_clients()
        srv.stop()


def _with_dial(model_dir: Path, dst: Path) -> Path:
    """A copy of the model dir whose manifest carries a budget dial (hand-made: offsets +1e6 at 1 layer .. -1e6 at
    all layers, linear between), so BUDGET moves the gates without a calibration run."""
    import shutil

    from hadskip.runtime.dial import Dial, DialPoint

    shutil.copytree(model_dir, dst)
    data = json.loads((dst / "manifest.json").read_text())
    n = int(data["backbone"]["num_layers"])
    knots = [DialPoint(offset=1e6, avg_layers=1.0, value=None, target=1.0),
             DialPoint(offset=-1e6, avg_layers=float(n), value=None, target=float(n))]
    data["dial"] = Dial(num_layers=n, points=knots, curve=knots).to_dict()
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


_CLIENTS: dict = {}


def _clients(server):
    """One HTTP and one gRPC client per server (closed by the `server` fixture)."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    if server.pid not in _CLIENTS:
        _CLIENTS[server.pid] = {"http": (http, http.InferenceServerClient(server.http_url)),
                                "grpc": (grpc, grpc.InferenceServerClient(server.grpc_url))}
    return _CLIENTS[server.pid]


def _close_clients() -> None:
    for clients in _CLIENTS.values():
        for _, client in clients.values():
            client.close()
    _CLIENTS.clear()


PROTOCOLS = ("http", "grpc")


def _tensor(mod, name, values, dtype="BYTES"):
    arr = np.asarray(values, dtype={"BYTES": object, "FP32": np.float32}.get(dtype))
    t = mod.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def _column(texts):
    return [[t.encode() if isinstance(t, str) else t] for t in texts]


def _infer(server, protocol, texts, pairs=None, model="hadskip"):
    mod, client = _clients(server)[protocol]
    inputs = [_tensor(mod, "TEXT", _column(texts))]
    if pairs is not None:
        inputs.append(_tensor(mod, "TEXT_PAIR", _column(pairs)))
    r = client.infer(model, inputs)
    return r.as_numpy("LABEL_ID"), r.as_numpy("PROBS"), r.as_numpy("LAYERS")


def _assert_equal(result, preds):
    label_id, probs, layers = result
    assert label_id.dtype == np.int64 and probs.dtype == np.float32 and layers.dtype == np.int8
    assert np.array_equal(label_id.reshape(-1), preds.label_ids)
    assert np.array_equal(probs, preds.probabilities)  # bitwise: the same runtime on the same batch
    assert np.array_equal(layers, preds.gates.astype(np.int8))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_single_and_batched_texts_equal_runtime(server, rt, protocol):
    texts = tiny_sentences(MAX_BATCH, seed=3) + ["fun " * 500]  # the last one is truncated, not refused
    for rows in (texts[:1], texts[1:]):
        preds = rt.predict(rows)
        _assert_equal(_infer(server, protocol, rows), preds)
    assert len({tuple(g) for g in rt.predict(texts).gates}) > 1, "the inputs should take different layers"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pairs_equal_runtime(server, rt, protocol):
    firsts, seconds = tiny_sentences(5, seed=4), tiny_sentences(5, seed=5)
    preds = rt.predict(list(zip(firsts, seconds, strict=True)))
    _assert_equal(_infer(server, protocol, firsts, seconds), preds)
    assert not np.array_equal(preds.probabilities, rt.predict(firsts).probabilities)  # the pair is used


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_budget_input_moves_the_dial_like_runtime_predict(server, model_dir, protocol):
    """BUDGET (FP32 [B, 1]) reaches Runtime.predict per row; a bad one, or BUDGET on a model without a dial,
    fails its request with the dial's one-line error."""
    from hadskip.runtime import Runtime

    dialed = Runtime.load(_with_dial(model_dir, Path(server.repo).parent / f"dial-ref-{protocol}"))
    mod, client = _clients(server)[protocol]
    texts = tiny_sentences(6, seed=8)
    lo, hi = dialed.info.dial.budget_range
    budgets = [float(np.float32(b)) for b in (lo, hi, lo, (lo + hi) / 2, hi, lo)]  # as FP32 carries them
    r = client.infer("dialed", [_tensor(mod, "TEXT", _column(texts)),
                                _tensor(mod, "BUDGET", [[b] for b in budgets], "FP32")])
    preds = dialed.predict(texts, budget=budgets)
    _assert_equal((r.as_numpy("LABEL_ID"), r.as_numpy("PROBS"), r.as_numpy("LAYERS")), preds)
    used = preds.gates.sum(axis=1)
    assert used[1] > used[0], "the highest budget should run more layers than the lowest"
    from tritonclient.utils import InferenceServerException

    for model, value, needle in (("dialed", hi + 5, "outside the calibrated range"),
                                 ("dialed", float("nan"), "BUDGET[0]"), ("hadskip", lo, "no budget dial")):
        with pytest.raises(InferenceServerException, match=re.escape(needle)):
            client.infer(model, [_tensor(mod, "TEXT", _column(texts[:1])), _tensor(mod, "BUDGET", [[value]], "FP32")])


def test_requests_share_an_execution_and_a_bad_one_fails_alone(server, rt):
    """Four requests reach `batched` together (it waits for 7 rows): 2 texts, an empty text, 3 texts and 1 text
    run as ONE execution; each good request gets its own rows back, the bad one its own error.
    (Triton batches only requests with the same inputs: a TEXT_PAIR request would run in another execution.)"""
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, concurrency=4)
    jobs = [tiny_sentences(2, seed=6), [""], tiny_sentences(3, seed=7), ["the plot was thin"]]
    try:
        before = client.get_inference_statistics("batched")["model_stats"][0]["execution_count"]
        pending = [client.async_infer("batched", [_tensor(http, "TEXT", _column(texts))]) for texts in jobs]
        results = []
        for p in pending:
            try:
                r = p.get_result()
                results.append((r.as_numpy("LABEL_ID"), r.as_numpy("PROBS"), r.as_numpy("LAYERS")))
            except Exception as exc:  # noqa: BLE001 - tritonclient raises InferenceServerException
                results.append(exc)
        import time

        deadline = time.monotonic() + 10  # the statistics may lag the answers on a busy machine
        while True:
            after = client.get_inference_statistics("batched")["model_stats"][0]["execution_count"]
            if after != before or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # a second execution's count would have landed by now too
        after = client.get_inference_statistics("batched")["model_stats"][0]["execution_count"]
    finally:
        client.close()
    assert after - before == 1
    together = rt.predict([*jobs[0], *jobs[2], *jobs[3]])  # the execution's batch: same rows, same padding
    _assert_equal(results[0], _Rows(together, slice(0, 2)))
    assert "TEXT[0] is empty" in str(results[1])
    _assert_equal(results[2], _Rows(together, slice(2, 5)))
    _assert_equal(results[3], _Rows(together, slice(5, 6)))


class _Rows:
    def __init__(self, preds, rows: slice):
        self.label_ids, self.probabilities, self.gates = (preds.label_ids[rows], preds.probabilities[rows],
                                                          preds.gates[rows])


BAD = {
    "empty text": (lambda mod: [_tensor(mod, "TEXT", [[b""]])], "TEXT[0] is empty"),
    "blank text": (lambda mod: [_tensor(mod, "TEXT", [[b"fine"], [b" \t\n"]])], "TEXT[1] is empty"),
    "not utf-8": (lambda mod: [_tensor(mod, "TEXT", [[b"\xff\xfe"]])], "not valid UTF-8"),
    "empty pair": (lambda mod: [_tensor(mod, "TEXT", [[b"a"]]), _tensor(mod, "TEXT_PAIR", [[b""]])],
                   "TEXT_PAIR[0] is empty"),
    "text over the byte limit": (lambda mod: [_tensor(mod, "TEXT", [[b"a" * (MAX_TEXT_BYTES + 1)]])],
                                 f"the limit is {MAX_TEXT_BYTES}"),
    "wrong dtype": (lambda mod: [_tensor(mod, "TEXT", np.ones((1, 1), np.int32), "INT32")], "data-type"),
    "batch over max": (lambda mod: [_tensor(mod, "TEXT", [[b"a"]] * (MAX_BATCH + 1))], "batch-size must be"),
    "pair rows differ": (lambda mod: [_tensor(mod, "TEXT", [[b"a"], [b"b"]]), _tensor(mod, "TEXT_PAIR", [[b"c"]])],
                         "batch size does not match"),
    "wrong shape": (lambda mod: [_tensor(mod, "TEXT", [[b"a", b"b"]])], "unexpected shape"),
    "no TEXT": (lambda mod: [_tensor(mod, "TEXT_PAIR", [[b"a"]])], "TEXT"),
    "unknown input": (lambda mod: [_tensor(mod, "TEXT", [[b"a"]]), _tensor(mod, "BUDGET", [[b"3"]])], "BUDGET"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_input_gets_an_error_and_the_instance_survives(server, rt, protocol):
    from tritonclient.utils import InferenceServerException

    from hadskip.triton.local import _children

    mod, client = _clients(server)[protocol]
    stubs = _children(server.pid)
    for name, (make, needle) in BAD.items():
        with pytest.raises(InferenceServerException) as info:
            client.infer("hadskip", make(mod))
        assert needle in str(info.value), (name, str(info.value))
        assert ("400" in str(info.value)) if protocol == "http" else ("INVALID_ARGUMENT" in str(info.value)), name
    assert client.is_model_ready("hadskip")
    assert _children(server.pid) == stubs  # the same stub processes: no instance crashed or restarted
    _assert_equal(_infer(server, protocol, ["a fine movie"]), rt.predict(["a fine movie"]))


def test_changed_graph_fails_to_load_while_the_others_serve(server):

    client = _clients(server)["http"][1]
    assert client.is_model_ready("hadskip") and client.is_model_ready("batched")
    assert not client.is_model_ready("broken")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE" and "head.onnx is corrupted" in index["broken"]["reason"]


def test_metrics_count_rows_and_executions(server):
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    assert 'nv_inference_count{model="hadskip",version="1"}' in text
    assert 'nv_inference_exec_count{model="hadskip",version="1"}' in text


def test_stop_leaves_nothing_behind(server):
    """Runs last: the fixture's server is stopped here (and its teardown finds nothing left to do)."""
    from hadskip.triton.local import _alive, _children

    pid, stubs, regions = server.pid, _children(server.pid), server.shm_regions()
    assert stubs and regions, "a running server has stub processes and shared-memory regions"
    log = server.log
    _close_clients()
    server.stop()
    assert not _alive(pid)
    assert not [p for p in stubs if _alive(p)]
    assert not server.shm_regions() and not any(r.exists() for r in regions)
    assert not Path(log).exists()


def test_start_failure_is_reported(tmp_path):
    from hadskip.triton.local import LocalTriton

    with pytest.raises(HadSkipError, match="does not exist"):
        LocalTriton(tmp_path / "missing").start()


def test_a_killed_server_is_cleaned_up(model_dir, tmp_path):
    """SIGKILL (a crash) leaves the stub processes and /dev/shm regions behind; `stop` ends and removes them."""
    import os
    import signal

    from hadskip.triton.local import LocalTriton, _alive

    _need_triton()
    write_repo(model_dir, tmp_path / "repo", TritonRepoConfig())
    srv = LocalTriton(tmp_path / "repo").start()
    pid, stubs, regions = srv.pid, set(srv.stubs), srv.shm_regions()
    assert stubs and regions
    os.kill(pid, signal.SIGKILL)
    srv.proc.wait()
    assert all(r.exists() for r in regions) and any(_alive(p) for p in stubs)  # what a crash leaves
    srv.stop()
    assert not [p for p in stubs if _alive(p)] and not any(r.exists() for r in regions)
