"""The configuration schema (configs/schema.py): every rule rejects a bad value naming the key, and the
configurations the project really uses are accepted."""
from pathlib import Path

import pytest
import yaml

from configs import CONFIG_DIR, DEFAULTS_FILE, ConfigError, load_config
from configs.schema import SCHEMA, check_value, validate


def _leaf_keys(tree, prefix=""):
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" != "model.args":
            keys.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_schema_covers_every_key_of_defaults_yaml():
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    assert sorted(SCHEMA) == sorted(_leaf_keys(defaults))


# (override, the key the message must name first). Every rule of the brief, one or more failing values.
BAD = [
    # gradient accumulation and mixup
    ("train.accumulate=0", "train.accumulate"),
    ("train.accumulate=1.5", "train.accumulate"),
    ("train.accumulate=true", "train.accumulate"),
    ("train.mixup.enable=yes please", "train.mixup.enable"),
    ("train.mixup.alpha=-0.1", "train.mixup.alpha"),
    ("train.mixup.cutmix_alpha=.nan", "train.mixup.cutmix_alpha"),
    ("train.mixup.prob=1.5", "train.mixup.prob"),
    ("train.mixup.switch_prob=-0.5", "train.mixup.switch_prob"),
    ("train.mixup.label_smoothing=2", "train.mixup.label_smoothing"),
    # choices
    ("train.precision=fp8", "train.precision"),
    ("test.precision=fp64", "test.precision"),
    ("data.dtype=int8", "data.dtype"),
    ("data.backend=ffmpeg", "data.backend"),
    ("data.device=tpu", "data.device"),
    ("train.optimizer=lamb", "train.optimizer"),
    ("train.precision=BF16", "train.precision"),
    # positive integers: 0, negative, a float, a bool, a string
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.epochs=true", "train.epochs"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-4", "data.batch_size"),
    ("train.base_batch=0", "train.base_batch"),
    ("train.validate_every=0", "train.validate_every"),
    ("train.save_every=0", "train.save_every"),
    ("train.log_every=0", "train.log_every"),
    ("train.max_nonfinite=0", "train.max_nonfinite"),
    ("test.num_clips=0", "test.num_clips"),
    ("test.num_crops=0", "test.num_crops"),
    ("test.batch_size=0", "test.batch_size"),
    ("data.num_frames=0", "data.num_frames"),
    ("data.sampling_rate=0", "data.sampling_rate"),
    ("data.train_crop=0", "data.train_crop"),
    ("data.val_crop=0", "data.val_crop"),
    ("data.test_crop=0", "data.test_crop"),
    ("data.test_short_side=0", "data.test_short_side"),
    ("data.prefetch=0", "data.prefetch"),
    ("model.num_classes=0", "model.num_classes"),
    ("model.num_classes=true", "model.num_classes"),
    ("model.num_classes=abc", "model.num_classes"),
    # non-negative numbers (and finite)
    ("train.base_lr=-0.1", "train.base_lr"),
    ("train.base_lr=.nan", "train.base_lr"),
    ("train.base_lr=abc", "train.base_lr"),
    ("train.warmup_start_lr=-1e-3", "train.warmup_start_lr"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("train.weight_decay=-0.0001", "train.weight_decay"),
    ("train.weight_decay=false", "train.weight_decay"),
    ("train.momentum=-0.9", "train.momentum"),
    ("train.precise_bn_batches=-1", "train.precise_bn_batches"),
    ("train.precise_bn_batches=2.5", "train.precise_bn_batches"),
    ("data.target_fps=0", "data.target_fps"),
    ("data.target_fps=-30", "data.target_fps"),
    ("data.target_fps=.inf", "data.target_fps"),
    # null or int >= 0
    ("data.num_workers=-1", "data.num_workers"),
    ("data.num_workers=1.5", "data.num_workers"),
    ("data.num_workers=true", "data.num_workers"),
    # seeds
    ("data.seed=abc", "data.seed"),
    ("data.seed=true", "data.seed"),
    ("data.seed=-1", "data.seed"),
    ("train.seed=abc", "train.seed"),
    ("train.seed=false", "train.seed"),
    ("train.seed=0.5", "train.seed"),
    ("train.seed=null", "train.seed"),
    # the training short-side range
    ("data.train_short_side=[320, 256]", "data.train_short_side"),
    ("data.train_short_side=[0, 256]", "data.train_short_side"),
    ("data.train_short_side=[256]", "data.train_short_side"),
    ("data.train_short_side=[256, 320, 400]", "data.train_short_side"),
    ("data.train_short_side=[256.0, 320]", "data.train_short_side"),
    ("data.train_short_side=[true, 320]", "data.train_short_side"),
    ("data.train_short_side=abc", "data.train_short_side"),
    ("data.train_short_side=0", "data.train_short_side"),
    # crops within their short sides
    ("data.train_crop=257", "data.train_crop"),            # > train_short_side lo 256
    ("data.val_crop=257", "data.val_crop"),                # > test_short_side 256
    ("data.test_crop=257", "data.test_crop"),              # > test_short_side 256
    # mean / std
    ("data.mean=[0.45, 0.45]", "data.mean"),
    ("data.mean=[0.45, 0.45, 0.45, 0.45]", "data.mean"),
    ("data.mean=[0.45, abc, 0.45]", "data.mean"),
    ("data.mean=0.45", "data.mean"),
    ("data.std=[0.225, 0, 0.225]", "data.std"),
    ("data.std=[0.225, -0.2, 0.225]", "data.std"),
    ("data.std=[0.225, 0.225]", "data.std"),
    # keep_last
    ("train.keep_last=-1", "train.keep_last"),
    ("train.keep_last=1.0", "train.keep_last"),
    # booleans are bools, not 0/1 or words YAML keeps as strings
    ("model.channels_last=1", "model.channels_last"),
    ("train.compile=0", "train.compile"),
    ("train.sync_bn=maybe", "train.sync_bn"),
    ("train.nesterov=null", "train.nesterov"),
    ("data.train_flip='true'", "data.train_flip"),
    # the model name
    ("model.name=''", "model.name"),
    ("model.name=null", "model.name"),
    ("model.name=5", "model.name"),
    # paths
    ("data.root=null", "data.root"),
    ("data.root=''", "data.root"),
    ("data.train_list=5", "data.train_list"),
    ("data.val_list=[a, b]", "data.val_list"),
    ("data.test_list=null", "data.test_list"),
    ("data.class_names=7", "data.class_names"),
    ("train.output_dir=null", "train.output_dir"),
    ("test.output_dir={a: 1}", "test.output_dir"),
    # the process-group timeout: seconds > 0
    ("train.dist_timeout_s=0", "train.dist_timeout_s"),
    ("train.dist_timeout_s=-5", "train.dist_timeout_s"),
    ("train.dist_timeout_s=ten", "train.dist_timeout_s"),
]


@pytest.mark.parametrize("override,key", BAD, ids=[o for o, _ in BAD])
def test_each_rule_rejects_a_bad_value_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"{key}="), message
    assert "\n" not in message
    assert "must be" in message


def test_messages_say_what_is_allowed_and_the_fix():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.precision=fp8"])
    assert str(info.value) == ("train.precision='fp8' (str) is not allowed: train.precision must be one of bf16, "
                               "fp16, fp32; fix it in the config file or with -o train.precision=...")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train_crop=300"])
    message = str(info.value)
    assert message.startswith("data.train_crop=300 is not allowed: it must be <= data.train_short_side[0] (256)")
    assert "lower data.train_crop or raise data.train_short_side" in message
    with pytest.raises(ConfigError, match=r"data\.num_workers=-1 \(int\).*null \(= available cores\) or an integer"):
        load_config(None, ["data.num_workers=-1"])


GOOD = [
    # (override, key, the value it resolves to)
    ("data.num_workers=null", "data.num_workers", None),
    ("data.num_workers=0", "data.num_workers", 0),
    ("data.class_names=null", "data.class_names", None),
    ("data.train_short_side=288", "data.train_short_side", [288, 288]),  # one int n means [n, n]
    ("data.train_short_side=[224, 224]", "data.train_short_side", [224, 224]),
    ("data.train_crop=256", "data.train_crop", 256),  # equal to the short side is fine
    ("train.precise_bn_batches=0", "train.precise_bn_batches", 0),
    ("train.keep_last=0", "train.keep_last", 0),
    ("train.base_lr=0", "train.base_lr", 0),
    ("train.warmup_epochs=2.5", "train.warmup_epochs", 2.5),
    ("data.target_fps=29.97", "data.target_fps", 29.97),
    ("data.mean=[0, 0.5, 1]", "data.mean", [0, 0.5, 1]),
    ("data.seed=123456789", "data.seed", 123456789),
    ("train.seed=0", "train.seed", 0),
    ("test.precision=fp32", "test.precision", "fp32"),
    ("model.args={dropout: 0.5}", "model.args", {"dropout": 0.5}),
    ("train.dist_timeout_s=5", "train.dist_timeout_s", 5),
    ("train.dist_timeout_s=0.5", "train.dist_timeout_s", 0.5),
]


@pytest.mark.parametrize("override,key,expected", GOOD, ids=[o for o, _, _ in GOOD])
def test_edge_values_are_accepted(override, key, expected):
    cfg = load_config(None, [override])
    section, leaf = key.split(".")
    assert cfg[section][leaf] == expected


def test_test_precision_defaults_to_bf16():
    assert load_config().test.precision == "bf16"


def test_a_single_short_side_in_a_file_becomes_a_pair(tmp_path):
    (tmp_path / "r.yaml").write_text("data:\n  train_short_side: 200\n  train_crop: 200\n")
    assert load_config(tmp_path / "r.yaml").data.train_short_side == [200, 200]


def test_validate_names_a_missing_key_and_check_value_an_unknown_one():
    cfg = load_config().to_dict()
    del cfg["train"]["epochs"]
    with pytest.raises(ConfigError, match=r"'train\.epochs' is missing"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"'train\.lr' has no schema entry"):
        check_value("train.lr", 0.1)


def test_check_value_returns_canonical_forms():
    assert check_value("data.train_short_side", 320) == [320, 320]
    assert check_value("data.train_short_side", (256, 320)) == [256, 320]
    assert check_value("data.std", (0.2, 0.3, 0.4)) == [0.2, 0.3, 0.4]


# ---------------------------------------------------------------------------------- real configurations


def test_demo_and_reference_recipes_are_accepted():
    demo = load_config(CONFIG_DIR / "demo.yaml")
    assert (demo.model.name, demo.data.train_short_side, demo.data.train_crop) == ("slowfast_tiny", [32, 36], 32)
    assert demo.test.precision == "fp32"
    for recipe in ("slowfast.yaml", "slowfast_8x8.yaml"):
        cfg = load_config(CONFIG_DIR / "recognition/slowfast" / recipe)
        assert cfg.data.train_short_side == [256, 320] and cfg.data.train_crop == 224


@pytest.mark.parametrize("suite", ["smoke", "full"])
@pytest.mark.parametrize("backend,device", [("pyav", "cpu"), ("dali", "cpu"), ("dali", "gpu")])
def test_benchmark_loader_configs_are_accepted(suite, backend, device, tmp_path):
    from benchmarks.run import SUITES, loader_config

    cfg = loader_config(SUITES[suite], Path(tmp_path), backend, device)
    expected = {  # hand-listed from the brief: the suites' sizes
        "smoke": dict(crop=48, short=[48, 56], test_short=48, test_crop=48, frames=8, classes=8),
        "full": dict(crop=224, short=[256, 320], test_short=256, test_crop=256, frames=32, classes=400),
    }[suite]
    assert cfg.data.train_crop == cfg.data.val_crop == expected["crop"]
    assert cfg.data.train_short_side == expected["short"]
    assert (cfg.data.test_short_side, cfg.data.test_crop) == (expected["test_short"], expected["test_crop"])
    assert (cfg.data.num_frames, cfg.model.num_classes) == (expected["frames"], expected["classes"])
    assert (cfg.data.backend, cfg.data.device) == (backend, device)


def test_the_test_fixture_overrides_are_accepted():
    # the small configuration tests/conftest.py builds (paths aside)
    cfg = load_config(None, [
        "model.num_classes=8", "data.backend=pyav", "data.device=cpu", "data.num_frames=8", "data.sampling_rate=2",
        "data.train_short_side=[48, 56]", "data.train_crop=48", "data.val_crop=48", "data.test_short_side=48",
        "data.test_crop=48", "data.batch_size=4", "data.num_workers=0", "test.num_clips=2", "test.num_crops=3",
        "test.batch_size=2", "model.channels_last=false",
    ])
    assert cfg.data.train_short_side == [48, 56] and cfg.data.num_workers == 0


def test_accumulate_and_mixup_defaults_leave_the_recipe_unchanged():
    cfg = load_config(CONFIG_DIR / "recognition" / "slowfast" / "slowfast.yaml")
    assert cfg.train.accumulate == 1
    assert dict(cfg.train.mixup) == {"enable": False, "alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0,
                                     "switch_prob": 0.5, "label_smoothing": 0.1}  # PySlowFast's MIXUP defaults
    assert load_config(None, ["train.mixup.enable=true", "train.accumulate=8"]).train.mixup.enable is True
