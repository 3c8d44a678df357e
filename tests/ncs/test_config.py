"""Config loading and validation: defaults, unknown keys, bad values, the shipped configs."""
from pathlib import Path

import pytest
import yaml

from ncs.config import (DEMO_CONFIG, ConfigError, baseline_epochs, defaults, demo_config, load_config,
                        prune_fraction, resolve_config)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_complete_and_paper_like():
    cfg = defaults()
    assert cfg.model.hidden == (512, 256, 128)
    assert cfg.optim.mode == "strict"
    assert [t.weight for t in cfg.tasks] == [0.7, 0.3]
    assert cfg.tasks[1].space == "clicked"
    assert prune_fraction(cfg) == pytest.approx(1 - 0.2 ** 0.25)
    from ncs.config.sizing import resolve_auto
    cfg, _ = resolve_auto(cfg, 297_000_000)  # the paper's 297M impressions: the paper's optimisation
    assert (cfg.train.batch_size, cfg.optim.lr, cfg.stages.warmup.epochs, cfg.stages.joint.epochs) == (4096, 1e-4, 1, 2)
    assert baseline_epochs(cfg) == cfg.stages.warmup.epochs + cfg.stages.joint.epochs == 3


@pytest.mark.parametrize("given, path", [
    ({"stages": {"warmup": {"epoch": 1}}}, "stages.warmup.epoch"),
    ({"optim": {"learning_rate": 1}}, "optim.learning_rate"),
    ({"bogus": 1}, "bogus"),
    ({"tasks": [{"name": "a", "label": "click", "colour": 1}, {"name": "b", "label": "click"}]}, "tasks[0].colour"),
])
def test_unknown_key_names_its_path(given, path):
    with pytest.raises(ConfigError) as e:
        resolve_config(given)
    assert str(e.value).startswith(f"{path}: unknown key")


@pytest.mark.parametrize("given, key, expected", [
    ({"optim": {"lr": -1}}, "optim.lr", "a number > 0"),
    ({"optim": {"lr": "fast"}}, "optim.lr", "a number"),
    ({"optim": {"mode": "loose"}}, "optim.mode", "strict, leaky"),
    ({"model": {"hidden": []}}, "model.hidden", "positive integers"),
    ({"model": {"embed_dim": True}}, "model.embed_dim", "an integer"),
    ({"stages": {"masks": {"final_density": 1.5}}}, "stages.masks.final_density", "(0.0, 1.0)"),
    ({"data": {"split": {"fractions": [0.5, 0.5, 0.5]}}}, "data.split.fractions", "summing to 1"),
    ({"data": {"kind": "tfrecord"}}, "data.path", "a file path"),
    ({"tasks": [{"name": "ctr", "label": "click"}]}, "tasks", "at least two tasks"),
    ({"tasks": [{"name": "ctr", "label": "click", "loss": "hinge"}, {"name": "b", "label": "x"}]},
     "tasks[0].loss", "bce, focal, mse"),
    ({"tasks": [{"name": "a", "label": "click"}, {"name": "a", "label": "conversion"}]}, "tasks", "distinct"),
    ({"models": ["single", "dense"]}, "models", "single, layer, connection"),
    ({"stages": {"joint": {"metric": "cvr_auc"}}}, "stages.joint.metric", "cvr_mse"),
])
def test_bad_value_names_key_and_expectation(given, key, expected):
    with pytest.raises(ConfigError) as e:
        resolve_config(given)
    msg = str(e.value)
    assert msg.startswith(f"{key}:"), msg
    assert expected in msg, msg


def test_three_tasks_and_models_string():
    cfg = resolve_config({
        "models": "connection,single",
        "tasks": [{"name": "ctr", "label": "click"}, {"name": "cvr", "label": "conversion", "space": "clicked",
                                                       "loss": "mse"},
                  {"name": "like", "label": "like", "loss": "focal", "weight": 0.1}],
    })
    assert cfg.models == ("single", "connection")  # fixed order: baselines first
    assert [t.name for t in cfg.tasks] == ["ctr", "cvr", "like"]
    assert cfg.tasks[2].space == "all"


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim:\n  lr: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(wrong))
    assert "optim.lr" in str(e.value) and str(wrong) in str(e.value)


def test_relative_data_path_resolved_against_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {kind: tfrecord, path: sub/x.gz}\n")
    assert load_config(str(p)).data.path == str(tmp_path / "sub" / "x.gz")


@pytest.mark.parametrize("name", ["paper", "lt4rec_sample", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert cfg.models == ("single", "layer", "connection")


def test_paper_config_is_the_paper():
    cfg = load_config(str(REPO / "configs" / "paper.yaml"))
    assert cfg.model.embed_dim == 64 and cfg.model.hidden == (512, 256, 128)
    assert cfg.optim.lr == 1e-4 and cfg.train.batch_size == 4096
    assert cfg.stages.masks.final_density == 0.2 and cfg.stages.masks.rounds == 4
    assert [t.weight for t in cfg.tasks] == [0.7, 0.3]


def test_sample_config_points_at_the_shared_sample():
    cfg = load_config(str(REPO / "configs" / "lt4rec_sample.yaml"))
    assert Path(cfg.data.path).resolve() == (REPO.parent / "shared" / "data" / "lt4rec" / "part-r-00002.gz").resolve()


def test_demo_yaml_matches_builtin():
    on_disk = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert resolve_config(on_disk) == resolve_config(DEMO_CONFIG) == demo_config()
    assert demo_config(rows=123).data.rows == 123


def test_every_path_resolved_against_config_file_and_run_from_elsewhere(tmp_path, monkeypatch):
    """data.path (and each path of its mapping), data.options.schema and data.cache_dir are
    relative to the config file: the same config works from any working directory."""
    from ncs.train.runner import load_data

    conf, data, elsewhere = tmp_path / "conf", tmp_path / "data", tmp_path / "elsewhere"
    for d in (conf, data, elsewhere):
        d.mkdir()
    rows = ["uid,vid,click,rate,req"] + [f"u{i % 5},v{i % 7},{i % 2},{(i % 2) * 0.5},{i // 3}" for i in range(30)]
    (data / "t.csv").write_text("\n".join(rows) + "\n")
    (data / "schema.yaml").write_text(
        "fields: [{name: uid}, {name: vid}]\nclick: click\nconversion: rate\ngroups: {request: req}\n")
    p = conf / "c.yaml"
    p.write_text("data: {kind: csv, path: ../data/t.csv, cache_dir: cache, options: {schema: ../data/schema.yaml}}\n")
    monkeypatch.chdir(elsewhere)
    cfg = load_config(str(p))
    assert cfg.data.path == str(data / "t.csv")
    assert cfg.data.options["schema"] == str(data / "schema.yaml")
    assert cfg.data.cache_dir == str(conf / "cache")
    encoded = load_data(cfg)                       # reads the file and schema, writes the cache
    assert len(encoded) == 30 and [f.name for f in encoded.fields] == ["uid", "vid"]
    assert any((conf / "cache").iterdir()) and not (elsewhere / "cache").exists()
    given = conf / "g.yaml"
    given.write_text("data: {kind: csv, options: {schema: {fields: [{name: uid}], click: click}},\n"
                     "       path: {train: ../data/t.csv, valid: /abs/v.csv, test: t.csv}}\n")
    got = load_config(str(given)).data
    assert got.path == {"train": str(data / "t.csv"), "valid": "/abs/v.csv", "test": str(conf / "t.csv")}
    assert got.options["schema"] == {"fields": [{"name": "uid"}], "click": "click"}  # inline: as given


def test_config_is_frozen_typed_and_dumps_the_same_yaml(tmp_path):
    import dataclasses

    import yaml
    from ncs.config import dump_config
    cfg = resolve_config({"stages": {"joint": {"metric": "cvr_mse"}}})
    assert cfg.stages.joint.metric == "cvr_mse" and cfg.tasks[1].name == "cvr"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.stages.joint.metric = "ctr_auc"
    assert cfg.override({"optim": {"mode": "leaky"}}).optim.mode == "leaky" and cfg.optim.mode == "strict"
    dump_config(cfg, str(tmp_path / "c.yaml"))
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == cfg.to_dict()
    assert load_config(str(tmp_path / "c.yaml")) == cfg


def test_removed_embedding_optimizer_key_is_accepted_with_a_warning():
    with pytest.warns(FutureWarning, match="optim.embedding_optimizer"):
        cfg = resolve_config({"optim": {"embedding_optimizer": "sparse_adam"}})
    assert cfg == defaults()
    with pytest.raises(ConfigError, match="optim.embedding_optimizer: expected one of sparse_adam, got 'dense'"):
        resolve_config({"optim": {"embedding_optimizer": "dense"}})


def test_backend_names_are_the_registry_s():
    """The config's backend choices (kept as literals so that reading a config does not import
    ncs_kernels) are "auto" plus every registered backend."""
    import ncs_kernels as nk
    from ncs.config import BACKEND_NAMES

    assert BACKEND_NAMES == ("auto",) + tuple(nk.BACKENDS)


def test_auto_sizes_follow_the_training_split():
    """A minimal config gets batch, lr and epochs sized to its data; the paper's data gets the paper's."""
    from ncs.config import resolve_config
    from ncs.config.sizing import PAPER_STEPS, auto_batch_size, auto_lr, resolve_auto

    cfg = resolve_config({})
    assert (cfg.train.batch_size, cfg.optim.lr, cfg.stages.warmup.epochs, cfg.stages.joint.epochs) == ("auto",) * 4
    small, chosen = resolve_auto(cfg, 3459)  # the real sample's training split: 28 steps an epoch, 2 + 6 epochs
    assert PAPER_STEPS == 217_530
    assert chosen == {"train.batch_size": 128, "optim.lr": pytest.approx(1e-4 * (128 / 4096) ** 0.5 * (217_530 / 224) ** 0.5),
                      "stages.warmup.epochs": 2, "stages.joint.epochs": 6}
    assert list(chosen) == ["train.batch_size", "optim.lr", "stages.warmup.epochs", "stages.joint.epochs"]
    assert small.train.batch_size == 128 and small.stages.joint.epochs == 6
    assert small.optim.lr == pytest.approx(5.509e-4, rel=1e-3)
    paper, _ = resolve_auto(cfg, 297_000_000)
    assert (paper.train.batch_size, paper.stages.warmup.epochs, paper.stages.joint.epochs) == (4096, 1, 2)
    assert paper.optim.lr == pytest.approx(1e-4)  # the paper's setting gives the paper's lr
    mid, _ = resolve_auto(cfg, 800_002)  # 1M synthetic rows' training split: 196 steps an epoch, 1 + 2 epochs
    assert 1e-4 * (217_530 / 588) ** 0.5 > 1e-3 and mid.optim.lr == 1e-3  # the step rule's 1.92e-3, capped at Adam's 1e-3
    assert [auto_batch_size(n) for n in (1, 600, 1024, 65_535, 65_536, 10 ** 9)] == [32, 32, 64, 2048, 4096, 4096]
    assert auto_lr(4096, PAPER_STEPS) == pytest.approx(1e-4)
    # the two square-root rules: 4x the batch doubles the lr, 4x the steps halves it
    assert auto_lr(512, 1000) == pytest.approx(2 * auto_lr(128, 1000))
    assert auto_lr(512, 4000) == pytest.approx(auto_lr(512, 1000) / 2)
    assert auto_lr(4096, 200) == 1e-3 and auto_lr(4096, 4 * 217_530) == pytest.approx(5e-5)  # capped; no floor
    with pytest.raises(ValueError, match="steps >= 1"):
        auto_lr(128, 0)
    # a number in the config is kept; only the keys left at auto are chosen, from the numbers given
    mixed, chosen = resolve_auto(resolve_config({"train": {"batch_size": 256}}), 3459)
    assert mixed.train.batch_size == 256 and chosen["stages.joint.epochs"] == 11  # 14 steps an epoch: ceil(150 / 14)
    assert chosen["optim.lr"] == pytest.approx(auto_lr(256, (4 + 11) * 14))
    given, chosen = resolve_auto(resolve_config({"stages": {"warmup": {"epochs": 1, "data_fraction": 0.5},
                                                            "joint": {"epochs": 1}}}), 3459)
    assert chosen["optim.lr"] == pytest.approx(auto_lr(128, 14 + 28))  # half the rows in warmup: 14 steps
    fixed = resolve_config({"train": {"batch_size": 64}, "optim": {"lr": 0.01},
                            "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 2}}})
    assert resolve_auto(fixed, 10) == (fixed, {})
    with pytest.raises(ValueError, match="training split is empty"):
        resolve_auto(cfg, 0)


def test_auto_keys_reject_other_strings():
    from ncs.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=r"train\.batch_size: expected an integer >= 1 or 'auto', got 'big'"):
        resolve_config({"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number > 0 or 'auto', got -1"):
        resolve_config({"optim": {"lr": -1}})
