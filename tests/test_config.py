"""The configuration system: defaults, recipes, overrides, unknown keys, file reading, saving."""
import os
import stat
from pathlib import Path

import pytest
import yaml

import configs
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
    cfg = load_config(None, ["train.epochs=3", "data.train_short_side=[64, 80]", "data.train_crop=64",
                             "data.backend=pyav", "train.sync_bn=true", "data.class_names=null",
                             "model.args={dropout: 0.1}"])
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


def test_save_config_writes_through_utils_atomic(tmp_path, monkeypatch):
    from utils import atomic

    calls = []

    def spy(path, text):
        calls.append(Path(path))
        return atomic.write_text(path, text)

    monkeypatch.setattr(configs, "write_text", spy)
    path = save_config(load_config(), tmp_path / "run")
    assert calls == [tmp_path / "run" / "config.yaml"] and path.is_file()
    # utils.atomic gives new files the permissions the umask allows, like open()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_save_config_accepts_a_plain_nested_dict(tmp_path):
    path = save_config({"train": {"epochs": 4}}, tmp_path)
    assert yaml.safe_load(path.read_text()) == {"train": {"epochs": 4}}


# ------------------------------------------------------------------------------- numbers without a dot


@pytest.mark.parametrize("text,expected", [
    ("1e-3", 0.001), ("1E-3", 0.001), ("5e-5", 0.00005), ("2e+1", 20.0), ("3e2", 300.0), ("-1e-2", -0.01),
    ("1.5e-3", 0.0015), (".5", 0.5), ("-.5e1", -5.0),
])
def test_exponent_floats_in_overrides_are_floats(text, expected):
    got = load_config(None, [f"data.mean=[{text}, 0, 0]"]).data.mean[0]  # data.mean allows any sign
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-12)
    assert load_config(None, ["train.base_lr=1e-3"]).train.base_lr == 0.001


def test_exponent_floats_in_files_are_floats(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  base_lr: 1e-3\n  warmup_start_lr: 1E-4\n  weight_decay: 5e-5\n")
    cfg = load_config(tmp_path / "r.yaml", ["train.base_lr=2e-3"])
    assert (cfg.train.base_lr, cfg.train.warmup_start_lr, cfg.train.weight_decay) == (0.002, 0.0001, 0.00005)
    assert load_config(tmp_path / "r.yaml").train.base_lr == 0.001


def test_the_loader_keeps_other_scalars_as_plain_yaml_does():
    # hand-listed: what YAML 1.1 (yaml.safe_load) gives for these, unchanged by the extended float resolver
    for text, expected in [("10", 10), ("1_000", 1000), ("0.1", 0.1), ("true", True), ("null", None),
                           ("abc", "abc"), ("1e", "1e"), ("e3", "e3"), ("1.2.3", "1.2.3"), ("v1e3", "v1e3")]:
        assert configs._yaml_load(text) == expected and type(configs._yaml_load(text)) is type(expected), text
    assert configs._yaml_load(".inf") == float("inf")
    assert configs._yaml_load("1e-3") == 0.001 and yaml.safe_load("1e-3") == "1e-3"  # the reason it exists


# ------------------------------------------------------------------------------------- list overrides


def test_comma_separated_list_overrides():
    assert load_config(None, ["data.train_short_side=256,320"]).data.train_short_side == [256, 320]
    assert load_config(None, ["data.train_short_side=[256,320]"]).data.train_short_side == [256, 320]
    assert load_config(None, ["data.train_short_side=256, 320"]).data.train_short_side == [256, 320]
    assert load_config(None, ["data.mean=0.5,0.4,0.3"]).data.mean == [0.5, 0.4, 0.3]
    assert load_config(None, ["data.std=1e-1,2e-1,3e-1"]).data.std == [0.1, 0.2, 0.3]
    # a key that is not a list keeps its comma
    assert load_config(None, ["data.root=videos,old"]).data.root == "videos,old"


@pytest.mark.parametrize("override", ["data.train_short_side=256,abc", "data.train_short_side=256,320,400",
                                      "data.train_short_side=256,", "data.train_short_side=,"])
def test_bad_comma_lists_are_config_errors(override):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith("data.train_short_side=")


def test_bad_mean_list_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^data\.mean=\[0\.5, 0\.4\] .*list of 3"):
        load_config(None, ["data.mean=0.5,0.4"])


# ---------------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("content", [
    bytes(range(128, 256)) * 4,                                    # binary: not UTF-8
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",                        # a PNG header
    "train:\n  epochs: 3\n".encode("utf-16"),                       # another encoding
    b"train:\n  epochs: \x00\x01\x02\n",                             # UTF-8, but control characters
], ids=["random-high-bytes", "png", "utf-16", "control-chars"])
def test_binary_or_undecodable_file_is_a_config_error_naming_it(tmp_path, content):
    recipe = tmp_path / "weird.yaml"
    recipe.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert str(recipe) in message and "\n" not in message


def test_utf16_file_says_utf8_is_needed(tmp_path):
    recipe = tmp_path / "u16.yaml"
    recipe.write_bytes("train:\n  epochs: 3\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"u16\.yaml' is not UTF-8 text \(byte 0xff at offset 0.*save it as UTF-8"):
        load_config(recipe)


def test_utf8_with_byte_order_mark_loads(tmp_path):
    recipe = tmp_path / "bom.yaml"
    recipe.write_bytes("\ufefftrain:\n  epochs: 3\n".encode("utf-8"))
    assert load_config(recipe).train.epochs == 3


def test_invalid_yaml_is_one_line_with_the_position(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  epochs: [3, 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(recipe)
    message = str(info.value)
    assert "broken.yaml" in message and "is not valid YAML (line " in message and "\n" not in message


def test_top_level_list_is_an_error(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top, got list"):
        load_config(recipe)


# ---------------------------------------------------------------------------------- the reference recipes

# Hand-listed from the PySlowFast / PaddleVideo Kinetics-400 recipes: what both recipes resolve to.
SHARED_RECIPE = {
    "model.num_classes": 400,
    "data.root": "data/kinetics400", "data.train_list": "data/kinetics400/train.list",
    "data.val_list": "data/kinetics400/val.list", "data.test_list": "data/kinetics400/val.list",
    "data.class_names": "data/kinetics400/classes.txt", "data.backend": "dali", "data.device": "gpu",
    "data.batch_size": 8, "data.num_frames": 32, "data.sampling_rate": 2, "data.target_fps": 30,
    "data.train_short_side": [256, 320], "data.train_crop": 224, "data.test_short_side": 256,
    "data.test_crop": 256, "data.val_crop": 224,
    "train.epochs": 196, "train.base_lr": 0.1, "train.base_batch": 64, "train.warmup_epochs": 34,
    "train.warmup_start_lr": 0.01, "train.precision": "bf16", "train.optimizer": "sgd", "train.momentum": 0.9,
    "train.nesterov": True, "train.weight_decay": 0.0001,
    "test.num_clips": 10, "test.num_crops": 3, "test.precision": "bf16",
}
RECIPE_EXPECTED = {
    "slowfast.yaml": {**SHARED_RECIPE, "model.name": "slowfast_r50_4x16", "train.output_dir": "output/SlowFast",
                      "test.output_dir": "output/SlowFast/test"},
    "slowfast_8x8.yaml": {**SHARED_RECIPE, "model.name": "slowfast_r50_8x8",
                          "train.output_dir": "output/SlowFast_8x8", "test.output_dir": "output/SlowFast_8x8/test"},
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_EXPECTED))
def test_reference_recipes_resolve_to_the_published_values(recipe):
    cfg = load_config(CONFIG_DIR / "recognition/slowfast" / recipe)
    resolved = {key: cfg[key.split(".")[0]][key.split(".")[1]] for key in RECIPE_EXPECTED[recipe]}
    assert resolved == RECIPE_EXPECTED[recipe]


def test_8x8_recipe_states_only_what_differs():
    raw = yaml.safe_load((CONFIG_DIR / "recognition/slowfast/slowfast_8x8.yaml").read_text())
    assert raw == {"_base_": "slowfast.yaml", "model": {"name": "slowfast_r50_8x8"},
                   "train": {"output_dir": "output/SlowFast_8x8"}, "test": {"output_dir": "output/SlowFast_8x8/test"}}


# ------------------------------------------------------------------------------ data.root and saved configs

def _prepared_root(tmp_path, classes=("a", "b", "c")):
    root = tmp_path / "my_videos"
    root.mkdir()
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def test_data_root_alone_gives_the_lists_class_names_and_class_count(tmp_path):
    root = _prepared_root(tmp_path)
    recipe = CONFIG_DIR / "recognition" / "slowfast" / "slowfast.yaml"
    # the recipe sets its own lists and 400 classes: the lists follow the new root, the explicit 400 is refused
    with pytest.raises(ConfigError, match=r"model.num_classes=400 .*lists 3 classes.*-o model.num_classes=3"):
        load_config(recipe, [f"data.root={root}"])
    cfg = load_config(recipe, [f"data.root={root}", "model.num_classes=3"])
    assert cfg.data.train_list == str(root / "train.list")
    assert cfg.data.val_list == str(root / "val.list")
    assert cfg.data.test_list == str(root / "val.list")
    assert cfg.data.class_names == str(root / "classes.txt")
    cfg = load_config(None, [f"data.root={root}"])  # no recipe: the count comes from classes.txt
    assert cfg.model.num_classes == 3


def test_lists_set_with_or_after_the_root_are_kept(tmp_path):
    root = _prepared_root(tmp_path)
    cfg = load_config(None, [f"data.root={root}", "data.train_list=elsewhere/train.txt", "data.class_names=null"])
    assert cfg.data.train_list == "elsewhere/train.txt"
    assert cfg.data.val_list == str(root / "val.list")
    assert cfg.data.class_names is None
    assert cfg.model.num_classes == 400  # the default: no class file to count


def test_a_root_without_classes_txt_drops_an_earlier_class_file(tmp_path):
    root = tmp_path / "bare"
    root.mkdir()
    recipe = CONFIG_DIR / "recognition" / "slowfast" / "slowfast.yaml"
    cfg = load_config(recipe, [f"data.root={root}"])
    assert cfg.data.class_names is None and cfg.model.num_classes == 400


def test_a_saved_configuration_is_the_base_and_overrides_still_apply(tmp_path):
    saved = load_config(CONFIG_DIR / "demo.yaml").to_dict()
    saved["train"]["epochs"] = 3
    saved["train"]["removed_in_this_version"] = 1  # a key of another version is skipped
    cfg = load_config(None, ["test.num_clips=1"], base=saved)
    assert cfg.model.name == "slowfast_tiny" and cfg.train.epochs == 3 and cfg.test.num_clips == 1
    assert "removed_in_this_version" not in cfg.train


def test_overrides_are_one_layer_whatever_their_order(tmp_path):
    root = _prepared_root(tmp_path)
    cfg = load_config(None, ["data.train_list=mine.list", f"data.root={root}"])
    assert cfg.data.train_list == "mine.list" and cfg.data.val_list == str(root / "val.list")
