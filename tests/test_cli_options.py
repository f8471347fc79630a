"""Each setting defined once: `hadskip finetune` / `hadskip train` options are generated from the config
dataclasses (help and default on the field), the optimiser settings are one OptimConfig, and `--backend`'s
help comes from the one backend registry."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import MISSING, asdict, fields, is_dataclass

import pytest
import typer

from hadskip.cli import train as cli_train
from hadskip.cli.main import app, main
from hadskip.runtime.serve.config import ServeConfig
from hadskip.training.config import HadSkipConfig, LossWeights, OptimConfig, TrainConfig

COMMANDS = {"finetune": (TrainConfig, cli_train.FINETUNE_INTERNAL), "train": (HadSkipConfig, cli_train.TRAIN_INTERNAL),
            "serve-local": (ServeConfig, {})}


def _click(name):
    return typer.main.get_command(app).commands[name]


def _leaf_fields(cls, prefix=()):
    """(dotted path, field, default) of every field, nested dataclasses (weights) walked into."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], (*prefix, f.name))
        else:
            yield ".".join((*prefix, f.name)), f, f.default if f.default is not MISSING else f.default_factory()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_an_option_with_the_dataclass_default(command):
    """Each field is a flag of the command (its own name, or the one its metadata names) whose default is the
    field's, or is listed as internal with a reason; nothing else of the config is typed in the CLI."""
    cls, internal = COMMANDS[command]
    params = {opt: p for p in _click(command).params for opt in p.opts}
    for path, f, default in _leaf_fields(cls):
        if path in internal:
            assert internal[path], path  # a reason
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in params, f"{command}: {path} has no option {flag}"
        p = params[flag]
        assert p.help == f.metadata["help"]
        if flag.startswith("--no-") or flag == "--quiet":  # switches a True default off
            assert default is True and p.default is False and p.is_flag
        else:
            assert p.default == default, (path, p.default, default)
        if isinstance(default, bool):  # plain switches, no --no-X twin
            assert p.is_flag and not p.secondary_opts, path


def test_help_shows_the_dataclass_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("TERMINAL_WIDTH", "300")
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("[default: 20.0]", "[default: 3.0]", "[default: reinmax]", "[default: 5e-05]",
                 HadSkipConfig.__dataclass_fields__["hard_tail"].metadata["help"]):
        assert text in out, text
    for flag in ("--no-gate-init", "--no-homotopy", "--quiet", "--beta", "--json", "--resume", "--force",
                 "--max-examples", "--text-col", "--stage2-kd", "--homotopy-start"):
        assert flag in out


def _captured(monkeypatch, target):
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {"stub": 1}

    monkeypatch.setattr(target[0], target[1], fake)
    return seen


def test_train_flags_set_their_fields(monkeypatch, tmp_path, capsys):
    import hadskip.training.stages as stages

    seen = _captured(monkeypatch, (stages, "train_hadskip"))
    assert main(["train", "--out", str(tmp_path / "o"), "--no-gate-init", "--no-homotopy", "--quiet", "--beta", "7",
                 "--resume", "--force", "--stage2-kd", "--max-examples", "5", "--text-col", "t", "--kd", "logits",
                 "--weight-decay", "0.1", "--warmup", "0.2", "--seed", "3", "--json"]) == 0
    cfg = seen["cfg"]
    assert (cfg.gate_init, cfg.homotopy, cfg.progress, cfg.resume, cfg.force, cfg.stage2_kd) == (
        False, False, False, True, True, True)
    assert cfg.weights == LossWeights(budget=7.0)
    assert (cfg.max_examples, cfg.text_col, cfg.kd, cfg.weight_decay, cfg.warmup, cfg.seed) == (
        5, "t", "logits", 0.1, 0.2, 3)
    assert '"stub": 1' in capsys.readouterr().out
    assert main(["train", "--out", str(tmp_path / "p")]) == 0  # no flags: exactly the dataclass defaults
    assert seen["cfg"] == HadSkipConfig(out=str(tmp_path / "p"))


def test_finetune_defaults_are_the_dataclass(monkeypatch, tmp_path, capsys):
    import hadskip.training.finetune as ft

    seen = _captured(monkeypatch, (ft, "finetune"))
    assert main(["finetune", "--quiet", "--json"]) == 0
    assert seen["cfg"] == TrainConfig(progress=False)


def test_one_optimiser_config_for_hadskip_and_the_baselines():
    from hadskip.evaluation.baselines import BaselineConfig

    names = [f.name for f in fields(OptimConfig)]
    assert names == ["lr", "batch_size", "weight_decay", "warmup", "seed"]
    for cls in (TrainConfig, HadSkipConfig, BaselineConfig):
        assert issubclass(cls, OptimConfig)
        assert {f.name: f.default for f in fields(cls) if f.name in names} == {
            f.name: f.default for f in fields(OptimConfig)}
    # run.json keeps the flat keys: an earlier run's recorded config gives the baseline its settings
    recorded = asdict(HadSkipConfig(lr=1e-4, batch_size=8, seed=3))
    assert recorded["lr"] == 1e-4 and "weights" in recorded
    base = BaselineConfig(teacher="t", out="o", epochs=1, **OptimConfig.settings_in(recorded))
    assert (base.lr, base.batch_size, base.seed, base.warmup) == (1e-4, 8, 3, 0.06)
    assert OptimConfig.settings_in({"lr": 2e-5, "gate_lr": 1.0}) == {"lr": 2e-5}  # an old run.json
    with pytest.raises(Exception, match="batch_size"):
        BaselineConfig(teacher="t", out="o", epochs=1, batch_size=0)


def test_backend_help_comes_from_the_registry():
    from hadskip.runtime.backends import BACKENDS, describe_backends

    described = describe_backends()
    assert list(described)[:4] == list(BACKENDS) == ["ort-cpu", "ort-cuda", "trt", "torch"]
    helps = {p.help for name in ("predict", "bench") for p in _click(name).params if "--backend" in p.opts}
    assert len(helps) == 1
    (text,) = helps
    for name in BACKENDS:  # plug-ins registered from Python after the CLI was built (other tests do) are not in it
        assert f"{name}: {described[name]}" in text


def test_built_in_backends_are_registered_openers_imported_when_opened():
    """The registry lists every backend without importing a backend module; ort-cpu opens through it."""
    code = ("import sys\nfrom hadskip.runtime.backends import describe_backends, find_opener\n"
            "assert set(describe_backends()) >= {'ort-cpu', 'ort-cuda', 'trt', 'torch'}\n"
            "assert not [m for m in sys.modules if m.startswith(('hadskip.runtime.backends.', 'torch', 'tensorrt'))]\n"
            "from hadskip.runtime.backends import builtin\n"
            "assert find_opener('ort-cpu') is builtin.open_ort_cpu and find_opener('trt') is builtin.open_trt\n"
            "assert 'tensorrt' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_serve_local_flags_build_the_serve_config(monkeypatch, tmp_path):
    """serve-local's options are ServeConfig's fields; the comma-separated --allowed-hosts becomes the list, the
    key comes from the environment."""
    import hadskip.runtime.serve as serve_pkg

    seen = {}
    monkeypatch.setattr(serve_pkg, "serve", lambda model, config: seen.update(model=model, config=config))
    monkeypatch.setenv("HADSKIP_API_KEY", "k3y")
    assert main(["serve-local", str(tmp_path), "--port", "0", "--allowed-hosts", "api.example,*.internal",
                 "--max-batch", "8", "--access-log"]) == 0
    c = seen["config"]
    assert seen["model"] == str(tmp_path) and c.port == 0 and c.max_batch == 8 and c.access_log
    assert c.allowed_hosts == ["api.example", "*.internal"] and c.api_key == "k3y" and c.max_queue == 32 * 8
