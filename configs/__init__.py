"""Configuration: YAML recipes under ``configs/``, ``-c FILE`` and repeated ``-o key.sub=value``.

``configs/defaults.yaml`` lists every key with its default. A recipe may set only keys that exist
there; an unknown key is an error that names the closest valid key. Every value is then checked against
``configs/schema.py`` (type, range, allowed values), so a bad value fails here, before any data or model
is touched. The resolved configuration is saved next to every output (:func:`save_config`).

Values are YAML, read with :class:`ConfigLoader`: ``1e-3`` is the float 0.001 (plain YAML 1.1 reads it as
a string), and ``-o data.train_short_side=256,320`` is the list ``[256, 320]`` for the schema's list keys.

Example::

    cfg = load_config("configs/recognition/slowfast/slowfast.yaml", ["train.epochs=10", "data.backend=pyav"])
    cfg.train.epochs  # 10
"""
from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from configs.schema import ConfigError, parse_list_override, validate
from utils.atomic import write_text

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
# Keys whose value is a free mapping (its sub-keys are checked by the code that consumes it).
FREE_KEYS = {"model.args"}

__all__ = ["Config", "ConfigError", "ConfigLoader", "load_config", "default_config", "save_config",
           "add_config_args", "config_from_args", "FREE_KEYS", "CONFIG_DIR", "DEFAULTS_FILE"]


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose floats also match without a dot (``1e-3``, ``5E4``, ``-2e+1``).

    NOTE: PyYAML follows YAML 1.1, where a float needs a dot: ``yaml.safe_load("1e-3")`` is the string
    ``'1e-3'``, and ``base_lr: 1e-3`` would then fail validation as a string.
    """


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


class Config(dict):
    """A dict with attribute access (``cfg.train.epochs``); nested mappings are Configs too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, Mapping) and not isinstance(value, Config):
                super().__setitem__(key, Config(value))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {sorted(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = Config(value) if isinstance(value, Mapping) and not isinstance(value, Config) else value

    def __deepcopy__(self, memo: dict) -> "Config":
        return Config(copy.deepcopy(dict(self), memo))

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _flat_keys(tree: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping) and dotted not in FREE_KEYS:
            keys.extend(_flat_keys(value, dotted + "."))
    return keys


def _unknown_key_error(dotted: str, valid: Iterable[str], source: str) -> ConfigError:
    valid = list(valid)
    close = difflib.get_close_matches(dotted, valid, n=1, cutoff=0.5)
    if not close:  # compare the last component only: `train.lr` -> `train.base_lr`
        leaf = dotted.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.5)
        close = [by_leaf[leaf_close[0]]] if leaf_close else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {dotted!r} in {source}{hint} (all keys are listed in {DEFAULTS_FILE})")


def _merge(base: dict, update: Mapping, source: str, prefix: str = "", *, layer: int = 0,
           set_at: dict | None = None, strict: bool = True) -> None:
    """Merge ``update`` into ``base``; ``set_at[dotted key] = layer`` for every key set (see :func:`load_config`).

    ``strict=False`` skips keys this version does not know (a configuration saved by another version)."""
    valid = _flat_keys(base)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            if not strict:
                continue
            raise _unknown_key_error(dotted, [prefix + k for k in valid], source)
        if dotted in FREE_KEYS:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} in {source} must be a mapping, got {value!r}")
            base[key] = dict(base[key] or {}, **(value or {}))
        elif isinstance(base[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} in {source} is a section; give sub-keys, got {value!r}")
            _merge(base[key], value, source, dotted + ".", layer=layer, set_at=set_at, strict=strict)
            continue
        else:
            base[key] = value
        if set_at is not None:
            set_at[dotted] = layer


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split())


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; recipes live under {CONFIG_DIR}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({err.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless; other encodings are not YAML here
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                          f"{err.start}; a binary file or another encoding such as UTF-16); save it as UTF-8 "
                          f"YAML") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({_yaml_problem(err)}); fix the file "
                          f"(a recipe is a mapping such as 'train: {{epochs: 10}}')") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value, e.g. train.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key; use key.sub=value")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # `-o data.train_short_side=256,320` for the schema's list keys
        value = parse_list_override(key, value, _parse_item)
    return key, value


def _parse_item(text: str) -> Any:
    try:
        return _yaml_load(text) if text else None
    except yaml.YAMLError:
        return text


def _nest(dotted: str, value: Any) -> dict:
    tree: Any = value
    for part in reversed(dotted.split(".")):
        tree = {part: tree}
    return tree


def default_config() -> Config:
    """The defaults of ``configs/defaults.yaml`` (not validated: :func:`load_config` checks the merged result)."""
    return Config(_read_yaml(DEFAULTS_FILE))


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (), *,
                base: Mapping | None = None, base_source: str = "a saved configuration") -> Config:
    """Defaults, then ``base``, then the recipe at ``path`` (its ``_base_`` chain first), then ``key=value``
    overrides; then the defaults that follow from ``data.root`` (:func:`_derive_from_root`); then validation.

    Args:
        path: a YAML recipe, or None.
        overrides: ``key.sub=value`` strings, applied in order (values are YAML).
        base: a resolved configuration to start from, e.g. the one a checkpoint carries (``test.py -w RUN/best.pt``
            and ``train.py --resume`` without ``-c``); keys this version does not know are skipped.
        base_source: how to name ``base`` in messages.

    Raises:
        ConfigError: an unreadable file, an unknown key, or a value the schema (``configs/schema.py``) rejects.
    """
    cfg = default_config().to_dict()
    set_at: dict[str, int] = {}
    layer = 0
    if base is not None:
        layer += 1
        _merge(cfg, base, base_source, layer=layer, set_at=set_at, strict=False)
    if path is not None:
        for layer_path, recipe in _recipe_chain(Path(path)):
            layer += 1
            _merge(cfg, recipe, str(layer_path), layer=layer, set_at=set_at)
    layer += 1  # the command line's overrides are one layer: their order among themselves does not matter here
    for text in overrides:
        key, value = _parse_override(text)
        _merge(cfg, _nest(key, value), f"override {text!r}", layer=layer, set_at=set_at)
    _derive_from_root(cfg, set_at)
    validate(cfg)
    return Config(cfg)


# what `data.root` implies for keys not set since: ROOT/train.list, ROOT/val.list, ROOT/classes.txt
_ROOT_FILES = {"train_list": "train.list", "val_list": "val.list", "test_list": "val.list",
               "class_names": "classes.txt"}


def _derive_from_root(cfg: dict, set_at: Mapping[str, int]) -> None:
    """Defaults that follow from ``data.root`` (the layout ``python -m pipelines.prepare --from-tree`` writes).

    When a layer (the saved base, a recipe file, or the command line's overrides together) sets ``data.root``, each of ``data.train_list``,
    ``data.val_list``, ``data.test_list`` and ``data.class_names`` that no layer at the same level or later sets
    becomes ``ROOT/train.list``, ``ROOT/val.list``, ``ROOT/val.list`` and ``ROOT/classes.txt`` (the class file only
    when it exists). So ``-c recipe.yaml -o data.root=MY_VIDEOS`` reads MY_VIDEOS' lists, not the recipe's.
    ``model.num_classes`` then defaults to the number of names in the class file; a value set explicitly (by a
    recipe, the saved base or an override) that differs from it is an error naming both.
    """
    root_layer = set_at.get("data.root")
    if root_layer is None:
        return
    data = cfg["data"]
    root = Path(str(data["root"]))
    for key, name in _ROOT_FILES.items():
        if set_at.get(f"data.{key}", -1) >= root_layer:
            continue
        candidate = root / name
        if key == "class_names" and not candidate.is_file():
            data[key] = None  # names class_0 .. class_{n-1}; an earlier layer's file belongs to another root
            continue
        data[key] = str(candidate)
    class_file = data.get("class_names")
    if not class_file or not Path(str(class_file)).is_file():
        return
    try:
        names = [line.strip() for line in Path(str(class_file)).read_text(encoding="utf-8-sig").splitlines()
                 if line.strip()]
    except (OSError, UnicodeDecodeError):
        return  # the loader's reading of the class file reports it
    if not names:
        return
    if "model.num_classes" not in set_at:
        cfg["model"]["num_classes"] = len(names)
    elif cfg["model"]["num_classes"] != len(names):
        raise ConfigError(
            f"model.num_classes={cfg['model']['num_classes']!r} but {str(class_file)!r} (data.class_names) lists "
            f"{len(names)} classes; drop model.num_classes to take the class file's count, or set "
            f"-o model.num_classes={len(names)}")


def _recipe_chain(path: Path, seen: tuple = ()) -> list[tuple[Path, dict]]:
    """A recipe may name a parent with ``_base_: other.yaml`` (relative to itself)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {str(path)!r} includes itself through _base_")
    data = _read_yaml(path)
    base = data.pop("_base_", None)
    chain = _recipe_chain(path.parent / base, seen + (path,)) if base else []
    return chain + [(path, data)]


def save_config(cfg: Mapping, directory: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved configuration into ``directory`` atomically; returns the file's path."""
    data = Config(cfg).to_dict()  # plain dicts, which yaml.safe_dump can represent
    return write_text(Path(directory) / name, yaml.safe_dump(data, sort_keys=False))


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-c", "--config", help="YAML recipe, e.g. configs/recognition/slowfast/slowfast.yaml")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, repeatable: -o train.epochs=10 -o data.backend=pyav",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.override)
