"""The configuration schema: every key of ``configs/defaults.yaml``, its type and its allowed values.

:data:`SCHEMA` is one table, ``dotted key -> rule``; :data:`RELATIONS` holds the few rules that tie two keys
together (a crop cannot be larger than the short side it is cut from). :func:`validate` checks a whole
configuration against both and raises :class:`ConfigError` with one line that names the key, the bad
value, what is allowed and how to fix it. ``configs.load_config`` calls it after the recipe and the
overrides are merged, so every driver, benchmark and test works on a checked configuration before any
data or model is touched.

Example::

    validate(load_config(...))            # already done by load_config
    check_value("data.backend", "ffmpeg")  # ConfigError: data.backend='ffmpeg' is not allowed: ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from utils.errors import UserError

PRECISIONS = ("bf16", "fp16", "fp32")
BACKENDS = ("pyav", "dali")
DEVICES = ("gpu", "cpu")
OPTIMIZERS = ("sgd", "adamw")
CLIP_RULES = ("reference", "spread")  # pipelines.sampling.CLIP_RULES (configs sits below pipelines)
ENSEMBLES = ("sum", "max")  # engine.evaluator.aggregate_views
VAL_SAMPLINGS = ("centred", "reference")  # pipelines.sampling.VAL_SAMPLINGS
LR_POLICIES = ("cosine", "steps")  # engine.lr_schedule


class ConfigError(UserError, ValueError):
    """A configuration file or override that cannot be used; the message says why and how to fix it."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML `true` is a bool, never a count


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class Rule:
    """One key's contract. ``check`` returns the value in canonical form, or None when it is not allowed."""

    allowed: str  # what is allowed, in words, for the error message
    nullable: bool = False
    is_list: bool = False  # a comma-separated override (`-o key=1,2`) is read as a list

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.nullable, None
        return self._check(value)

    def _check(self, value: Any) -> tuple[bool, Any]:  # every rule below overrides it
        raise NotImplementedError(f"{type(self).__name__} does not define _check")


@dataclass(frozen=True)
class Int(Rule):
    minimum: int = 0

    def _check(self, value):
        return _is_int(value) and value >= self.minimum, value


@dataclass(frozen=True)
class Number(Rule):
    minimum: float = 0.0
    exclusive: bool = False  # minimum itself is not allowed

    def _check(self, value):
        if not _is_number(value):
            return False, value
        return (value > self.minimum if self.exclusive else value >= self.minimum), value


@dataclass(frozen=True)
class UnitInterval(Rule):
    """A finite number in [0, 1] (a probability, a label-smoothing fraction)."""

    def _check(self, value):
        return _is_number(value) and 0.0 <= value <= 1.0, value


@dataclass(frozen=True)
class Choice(Rule):
    choices: tuple = ()

    def _check(self, value):
        return isinstance(value, str) and value in self.choices, value


@dataclass(frozen=True)
class Bool(Rule):
    def _check(self, value):
        return isinstance(value, bool), value


@dataclass(frozen=True)
class Text(Rule):
    """A string (a name or a path); ``non_empty`` also rejects '' and blanks."""

    non_empty: bool = True

    def _check(self, value):
        return isinstance(value, str) and (bool(value.strip()) or not self.non_empty), value


@dataclass(frozen=True)
class NumberList(Rule):
    length: int = 3
    positive: bool = False

    def _check(self, value):
        if not isinstance(value, (list, tuple)) or len(value) != self.length:
            return False, value
        ok = all(_is_number(v) and (v > 0 or not self.positive) for v in value)
        return ok, list(value)


@dataclass(frozen=True)
class IntRange(Rule):
    """``[lo, hi]`` of positive ints with lo <= hi; a single int ``n`` means ``[n, n]``."""

    def _check(self, value):
        if _is_int(value):
            value = [value, value]
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return False, value
        lo, hi = value
        return _is_int(lo) and _is_int(hi) and 1 <= lo <= hi, list(value)


@dataclass(frozen=True)
class IntList(Rule):
    """A list of integers >= 0, strictly increasing (e.g. LR step epochs); ``[]`` allowed."""

    def _check(self, value):
        if not isinstance(value, (list, tuple)):
            return False, value
        ok = all(_is_int(v) and v >= 0 for v in value) and all(a < b for a, b in zip(value, value[1:]))
        return ok, list(value)


@dataclass(frozen=True)
class FactorList(Rule):
    """A non-empty list of numbers in (0, 1] (one number ``f`` means ``[f]``), or (``pairs``) of ``[t, s]`` pairs
    of such numbers."""

    pairs: bool = False

    def _check(self, value):
        if not self.pairs and _is_number(value):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            return False, value

        def factor(v):
            return _is_number(v) and 0.0 < v <= 1.0

        if self.pairs:
            ok = all(isinstance(p, (list, tuple)) and len(p) == 2 and all(factor(v) for v in p) for p in value)
            return ok, [list(p) for p in value] if ok else value
        return all(factor(v) for v in value), list(value)


@dataclass(frozen=True)
class Section(Rule):
    """A free mapping whose sub-keys the consumer checks (``model.args``)."""

    def _check(self, value):
        return isinstance(value, Mapping), value


@dataclass(frozen=True)
class BoolOrAuto(Rule):
    """``true``, ``false`` or the string ``auto`` (decided at run time)."""

    def _check(self, value):
        return isinstance(value, bool) or value == "auto", value


POSITIVE_INT = Int("a positive integer (>= 1)", minimum=1)
NON_NEGATIVE_INT = Int("an integer >= 0", minimum=0)
NON_NEGATIVE = Number("a finite number >= 0", minimum=0.0)
BOOL = Bool("true or false")
PATH = Text("a path (a non-empty string; quote it if it looks like a number)")
PRECISION = Choice("one of bf16, fp16, fp32", choices=PRECISIONS)
SEED = Int("an integer >= 0 (numpy's seed sequences reject negative seeds)", minimum=0)

# Every key of configs/defaults.yaml. tests/test_schema.py checks that the two list the same keys.
SCHEMA: dict[str, Rule] = {
    "model.name": Text("a non-empty model name (see models.list_models())"),
    "model.num_classes": POSITIVE_INT,
    "model.args": Section("a mapping of architecture arguments, e.g. {dropout: 0.5}"),
    "model.channels_last": BOOL,

    "data.root": PATH,
    "data.train_list": PATH,
    "data.val_list": PATH,
    "data.test_list": PATH,
    "data.class_names": Text("null or a path (a non-empty string)", nullable=True),
    "data.backend": Choice("one of pyav, dali", choices=BACKENDS),
    "data.device": Choice("one of gpu, cpu", choices=DEVICES),
    "data.batch_size": POSITIVE_INT,
    "data.num_workers": Int("null (= available cores) or an integer >= 0", nullable=True, minimum=0),
    "data.num_frames": POSITIVE_INT,
    "data.sampling_rate": POSITIVE_INT,
    "data.target_fps": Number("a finite number > 0", minimum=0.0, exclusive=True),
    "data.train_short_side": IntRange("[lo, hi], two positive integers with lo <= hi (or one integer n = [n, n])",
                                      is_list=True),
    "data.train_crop": POSITIVE_INT,
    "data.train_flip": BOOL,
    "data.test_short_side": POSITIVE_INT,
    "data.test_crop": POSITIVE_INT,
    "data.val_crop": POSITIVE_INT,
    "data.resize_antialias": BoolOrAuto("auto, true or false (auto: off for imported weights, on otherwise)"),
    "data.mean": NumberList("a list of 3 finite numbers (one per RGB channel)", is_list=True, length=3),
    "data.std": NumberList("a list of 3 finite numbers > 0 (one per RGB channel)", is_list=True, length=3,
                           positive=True),
    "data.dtype": PRECISION,
    "data.prefetch": POSITIVE_INT,
    "data.seed": SEED,

    "train.epochs": POSITIVE_INT,
    "train.base_lr": NON_NEGATIVE,
    "train.base_batch": POSITIVE_INT,
    "train.warmup_epochs": NON_NEGATIVE,
    "train.warmup_start_lr": NON_NEGATIVE,
    "train.optimizer": Choice("one of sgd, adamw", choices=OPTIMIZERS),
    "train.momentum": NON_NEGATIVE,
    "train.nesterov": BOOL,
    "train.weight_decay": NON_NEGATIVE,
    "train.precision": PRECISION,
    "train.compile": BOOL,
    "train.sync_bn": BOOL,
    "train.accumulate": Int("a positive integer (>= 1): micro-batches per optimizer step", minimum=1),
    "train.mixup.enable": BOOL,
    "train.mixup.alpha": NON_NEGATIVE,
    "train.mixup.cutmix_alpha": NON_NEGATIVE,
    "train.mixup.prob": UnitInterval("a number in [0, 1]"),
    "train.mixup.switch_prob": UnitInterval("a number in [0, 1]"),
    "train.mixup.label_smoothing": UnitInterval("a number in [0, 1] (e.g. 0.1)"),
    "train.lr_policy": Choice("one of cosine, steps", choices=LR_POLICIES),
    "train.lr_steps": IntList("a list of increasing epochs starting at 0 (e.g. [0, 94, 154, 196]); used by "
                              "train.lr_policy=steps", is_list=True),
    "train.lr_gamma": Number("a number > 0 (e.g. 0.1): the LR factor of each train.lr_steps step", minimum=0.0,
                             exclusive=True),
    "train.multigrid.long_cycle": BOOL,
    "train.multigrid.short_cycle": BOOL,
    "train.multigrid.epoch_factor": Number("a number > 0 (e.g. 1.5): the multigrid run's epochs over "
                                           "train.epochs", minimum=0.0, exclusive=True),
    "train.multigrid.long_cycle_factors": FactorList("a non-empty list of [t, s] pairs in (0, 1] (frames and crop "
                                                     "relative to the full shape)", pairs=True),
    "train.multigrid.short_cycle_factors": FactorList("a non-empty list of numbers in (0, 1] (crops relative to "
                                                      "data.train_crop)", is_list=True),
    "train.precise_bn_batches": Int("an integer >= 0 (0 = off)", minimum=0),
    "train.validate_every": POSITIVE_INT,
    "train.val_sampling": Choice("one of centred, reference", choices=VAL_SAMPLINGS),
    "train.save_every": POSITIVE_INT,
    "train.keep_last": NON_NEGATIVE_INT,
    "train.max_nonfinite": POSITIVE_INT,
    "train.log_every": POSITIVE_INT,
    "train.output_dir": PATH,
    "train.seed": SEED,
    "train.dist_timeout_s": Number("a number of seconds > 0 (e.g. 600)", minimum=0.0, exclusive=True),

    "test.num_clips": POSITIVE_INT,
    "test.num_crops": POSITIVE_INT,
    "test.clip_rule": Choice("one of reference, spread", choices=CLIP_RULES),
    "test.batch_size": POSITIVE_INT,
    "test.ensemble": Choice("one of sum, max", choices=ENSEMBLES),
    "test.output_dir": PATH,
    "test.precision": PRECISION,
}

LIST_KEYS = frozenset(key for key, rule in SCHEMA.items() if rule.is_list)


@dataclass(frozen=True)
class AtMost:
    """``key <= limit_key`` (``limit_key``'s element ``index`` when it is a list), with the reason."""

    key: str
    limit_key: str
    index: Optional[int]
    why: str

    def limit(self, cfg: Mapping) -> Any:
        value = _lookup(cfg, self.limit_key)
        return value[self.index] if self.index is not None else value


RELATIONS: tuple[AtMost, ...] = (
    AtMost("data.train_crop", "data.train_short_side", 0,
           "the training crop is cut from a clip whose short side is scaled into data.train_short_side"),
    AtMost("data.val_crop", "data.test_short_side", None,
           "the validation crop is cut from a clip whose short side is scaled to data.test_short_side"),
    AtMost("data.test_crop", "data.test_short_side", None,
           "the test crops are cut from a clip whose short side is scaled to data.test_short_side"),
)


# ------------------------------------------------------------------------------------------------ checks


def _lookup(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"config key {dotted!r} is missing; every key is listed in configs/defaults.yaml "
                              f"(load configurations with configs.load_config, which fills in the defaults)")
        node = node[part]
    return node


def check_value(key: str, value: Any) -> Any:
    """Check one value against :data:`SCHEMA`; returns it in canonical form (``train_short_side: n`` -> [n, n]).

    Args:
        key: a dotted key of ``configs/defaults.yaml``, e.g. ``train.epochs``.
        value: the value to check.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    rule = SCHEMA.get(key)
    if rule is None:
        raise ConfigError(f"config key {key!r} has no schema entry; known keys: {', '.join(sorted(SCHEMA))}")
    ok, canonical = rule.check(value)
    if not ok:
        raise ConfigError(f"{key}={value!r} ({_type_name(value)}) is not allowed: {key} must be {rule.allowed}; "
                          f"fix it in the config file or with -o {key}=...")
    return canonical


def validate(cfg: Mapping) -> None:
    """Check every key of ``cfg`` against :data:`SCHEMA` and :data:`RELATIONS`; canonical forms are written back.

    Args:
        cfg: a full configuration (a ``configs.Config`` or nested dicts) holding every key of defaults.yaml.
            Values are normalised in place (a single ``data.train_short_side`` int becomes ``[n, n]``, tuples
            become lists), so the consumers see one form.

    Raises:
        ConfigError: one line naming the first bad key, its value, what is allowed and the fix.
    """
    for key in SCHEMA:
        canonical = check_value(key, _lookup(cfg, key))
        section, leaf = key.rsplit(".", 1)
        parent = _lookup(cfg, section)
        if parent[leaf] is not canonical:
            parent[leaf] = canonical
    _check_lr_steps(cfg)
    for relation in RELATIONS:
        value, limit = _lookup(cfg, relation.key), relation.limit(cfg)
        if value > limit:
            where = relation.limit_key + (f"[{relation.index}]" if relation.index is not None else "")
            raise ConfigError(
                f"{relation.key}={value!r} is not allowed: it must be <= {where} ({limit!r}), because {relation.why}; "
                f"lower {relation.key} or raise {relation.limit_key}")


def _check_lr_steps(cfg: Mapping) -> None:
    """``train.lr_policy: steps`` (and the long multigrid cycle, which cuts every LR step into stages) needs
    ``train.lr_steps`` = [0, ...] with every step inside the run."""
    policy, steps, epochs = (_lookup(cfg, k) for k in ("train.lr_policy", "train.lr_steps", "train.epochs"))
    if policy != "steps":
        return
    if not steps or steps[0] != 0 or steps[-1] >= epochs:
        raise ConfigError(
            f"train.lr_steps={steps!r} is not allowed with train.lr_policy=steps: it must start at 0 and end before "
            f"train.epochs={epochs} (e.g. -o train.lr_steps=0,94,154,196 for 239 epochs), or use "
            f"train.lr_policy=cosine")


def parse_list_override(key: str, text: str, parse_item: Callable[[str], Any]) -> Any:
    """``-o key=256,320`` for a list-typed key: the comma-separated items, each parsed by ``parse_item``.

    Returns ``text`` unchanged for a key that is not list-typed or text without a comma (the schema then
    judges the value). Items are checked by :func:`validate` afterwards, so ``256,abc`` fails there.
    """
    if key not in LIST_KEYS or "," not in text:
        return text
    return [parse_item(item.strip()) for item in text.split(",")]
