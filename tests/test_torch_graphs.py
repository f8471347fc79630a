"""The torch backend's CUDA-graph bookkeeping on CPU (hadskip.modeling.cuda_graphs): a stand-in graph re-runs the
unit on its static inputs into its static output, which is what a replay does, so the routed results with
graphs must equal the eager ones exactly, including rows scattered into a graph's static output."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hadskip.modeling.cuda_graphs import UnitGraphs  # noqa: E402
from hadskip.errors import HadSkipError  # noqa: E402
from hadskip.modeling.torch_backend import TorchBackend  # noqa: E402
from hadskip.runtime.router import route  # noqa: E402
from hadskip.testing import id_batch, tiny_model  # noqa: E402


class ReplayGraphs(UnitGraphs):
    """UnitGraphs whose capture needs no GPU: replay = run fn on the static inputs, into the static output."""

    def __init__(self, *args, fail=(), **kwargs):
        super().__init__("cpu", *args, **kwargs)
        self.fail = set(fail)

    def _capture(self, fn, args):
        if any(k in self.fail for k in [args[0].shape[0]]):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        static = [a.clone() for a in args]
        out = fn(*static)

        class Graph:
            def replay(self):
                out.copy_(fn(*static))

        return Graph(), static, out

    def _recover(self):
        pass


def _batch(seed, b=7):
    return id_batch(np.random.default_rng(seed), b)


@pytest.fixture(scope="module")
def model():
    return tiny_model("bert")[0]


def test_routed_results_with_graphs_equal_eager(model):
    eager = TorchBackend(model, "cpu", cuda_graphs="off")
    graphs = ReplayGraphs()
    replayed = TorchBackend(model, "cpu", graphs=graphs)
    rng = np.random.default_rng(3)
    L = model.num_layers
    for seed in (0, 1, 0, 1, 0, 2, 0):  # repeated shapes: eager, then captured, then replayed
        ids, mask, tt = _batch(seed)
        for forced in (None, rng.random((len(ids), L)) < 0.5):
            a, b = route(eager, ids, mask, tt, forced), route(replayed, ids, mask, tt, forced)
            np.testing.assert_array_equal(a.gates, b.gates)
            np.testing.assert_array_equal(a.logits, b.logits)
    assert graphs.captures > 0 and graphs.replays > graphs.captures and not graphs.failed
    assert 0 < route(eager, *_batch(0)).gates.mean() < 1  # rows took different paths (gather/scatter ran)


def test_first_sight_runs_eagerly_then_one_capture_then_replays():
    g = ReplayGraphs()
    fn = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        first = g.run(("u", 0), fn, x)
        assert g.captures == 0 and not g.graphs
        second = g.run(("u", 0), fn, x)
        assert g.captures == 1 and g.replays == 1
        third = g.run(("u", 0), fn, x * 2)  # new values through the static input
        torch.testing.assert_close(third, fn(x * 2))
        assert third is second and g.captures == 1 and g.replays == 2  # the static output
        torch.testing.assert_close(first, fn(x))
        g.run(("u", 0), fn, torch.randn(3, 5, 4))  # another shape: its own bucket, eager at first sight
        assert len(g.graphs) == 1 and len(g.seen) == 2


def test_big_calls_and_the_limit_run_eagerly():
    fn = torch.nn.Identity()
    g = ReplayGraphs(max_tokens=16, limit=1)
    big = torch.zeros(4, 5, 2)  # 20 tokens > 16
    for _ in range(3):
        g.run(("u", 0), fn, big)
    assert not g.graphs and g.captures == 0
    small, other = torch.zeros(2, 2, 2), torch.zeros(1, 3, 2)
    for _ in range(3):
        g.run(("u", 0), fn, small)
        g.run(("u", 1), fn, other)
    assert g.captures == 1 and len(g.graphs) == 1  # the limit


def test_a_failed_capture_is_not_retried_and_runs_eagerly(capsys):
    g = ReplayGraphs(fail=[3])
    fn = torch.nn.Linear(2, 2)
    x = torch.randn(3, 4, 2)
    with torch.no_grad():
        outs = [g.run(("layer", 1), fn, x) for _ in range(4)]
    assert g.captures == 0 and len(g.failed) == 1 and not g.graphs
    assert all(torch.equal(o, fn(x)) for o in outs)
    assert capsys.readouterr().err.count("capture of ('layer', 1)") == 1


def test_cuda_graphs_option_is_checked_and_off_on_cpu(model):
    with pytest.raises(HadSkipError, match="cuda_graphs"):
        TorchBackend(model, "cpu", cuda_graphs="sometimes")
    assert TorchBackend(model, "cpu").graphs is None  # no CUDA: nothing to capture
