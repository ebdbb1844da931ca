"""The configuration system: defaults, recipes, overrides, unknown keys, saving."""
from pathlib import Path

import pytest
import yaml

from configs import CONFIG_DIR, ConfigError, load_config, save_config

RECIPES = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.name != "defaults.yaml")


def test_defaults_load_with_documented_values():
    cfg = load_config()
    # the reference recipe's numbers, from PySlowFast/PaddleVideo's SlowFast configs
    assert cfg.train.base_lr == 0.1 and cfg.train.base_batch == 64
    assert cfg.train.warmup_epochs == 34 and cfg.train.epochs == 196
    assert cfg.data.mean == [0.45, 0.45, 0.45] and cfg.data.std == [0.225, 0.225, 0.225]
    assert cfg.test.num_clips == 10 and cfg.test.num_crops == 3


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.model.name


def test_reference_recipes_name_the_published_models():
    assert load_config(CONFIG_DIR / "recognition/slowfast/slowfast.yaml").model.name == "slowfast_r50_4x16"
    assert load_config(CONFIG_DIR / "recognition/slowfast/slowfast_8x8.yaml").model.name == "slowfast_r50_8x8"


def test_overrides_parse_yaml_scalars_and_lists(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "data.train_short_side=[64, 80]", "data.backend=pyav",
                             "train.sync_bn=true", "data.class_names=null", "model.args={dropout: 0.1}"])
    assert cfg.train.epochs == 3
    assert cfg.data.train_short_side == [64, 80]
    assert cfg.data.backend == "pyav"
    assert cfg.train.sync_bn is True
    assert cfg.data.class_names is None
    assert cfg.model.args == {"dropout": 0.1}


def test_unknown_override_names_closest_key():
    with pytest.raises(ConfigError, match=r"'train\.epoch'.*did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"'train\.lr'.*'train\.base_lr'"):
        load_config(None, ["train.lr=0.2"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"'data\.batchsize' in .*bad\.yaml.*'data\.batch_size'"):
        load_config(recipe)


def test_section_given_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["train=3"])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/recipe.yaml")


def test_base_chain_and_precedence(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\n  base_lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.base_lr=0.25"])
    assert (cfg.train.epochs, cfg.train.base_lr) == (9, 0.25)


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=5"])
    path = save_config(cfg, tmp_path / "out")
    assert path == Path(tmp_path / "out" / "config.yaml")
    saved = yaml.safe_load(path.read_text())
    assert saved["train"]["epochs"] == 5
    assert load_config(path).to_dict() == cfg.to_dict()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
