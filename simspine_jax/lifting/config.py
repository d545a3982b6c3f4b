"""Configuration of a lifting run: frozen dataclasses read from TOML.

``configs/default.toml`` (package data) is the only home of every default, with a comment on each
field; a user's TOML file overrides some fields, and ``--set KEY=VALUE`` overrides (``train.steps=
500``, ``model.kind=kinematic``, ``seed=3``) come last, each value parsed as its field's type. The
result is parsed once into a :class:`LiftingConfig`; nothing downstream holds a default of its own.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..errors import InputError

__all__ = [
    "DataConfig",
    "LiftingConfig",
    "ModelConfig",
    "TrainConfig",
    "config_to_toml",
    "default_config_path",
    "load_config",
]

MODEL_KINDS = ("simple_baseline", "kinematic")
JOINT_SETS = ("spine15", "body37")
DATA_SOURCES = ("synthetic", "simspine", "h36m")


@dataclass(frozen=True)
class ModelConfig:
    kind: str
    joints: str
    hidden: int
    blocks: int
    dropout: float
    predict_scale: bool
    max_scale: float


@dataclass(frozen=True)
class DataConfig:
    source: str
    root: str
    train_hz: float
    test_hz: float
    duration_s: float
    noise_px: float
    outlier_rate: float
    keypoint_dropout: float
    train_subjects: str
    test_subjects: str


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    decay_steps: int
    decay_rate: float
    angle_weight: float
    checkpoint_every: int
    log_every: int
    eval_batch_size: int
    progress: bool


@dataclass(frozen=True)
class LiftingConfig:
    seed: int
    model: ModelConfig
    data: DataConfig
    train: TrainConfig

    def replace(self, **changes) -> LiftingConfig:
        """A copy with dotted fields changed: ``cfg.replace(**{"train.steps": 10})``."""
        return _from_dict(_merge(config_to_dict(self), _dotted(changes, "replace()")), "replace()")


def default_config_path() -> Path:
    """The bundled ``configs/default.toml`` (package data)."""
    return Path(str(files("simspine_jax.lifting") / "configs" / "default.toml"))


def load_config(path: str | Path | None = None, overrides=()) -> LiftingConfig:
    """Defaults, then the TOML file ``path`` (optional), then ``KEY=VALUE`` overrides.

    Unknown sections or fields, values of the wrong type and unknown choices raise
    :class:`~simspine_jax.errors.InputError` naming the file and field.
    """
    with open(default_config_path(), "rb") as f:
        data = tomllib.load(f)
    if path is not None:
        try:
            with open(path, "rb") as f:
                user = tomllib.load(f)
        except OSError as e:
            raise InputError(f"cannot read config: {e.strerror}", path=str(path)) from None
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"not valid TOML: {e}", path=str(path)) from None
        data = _merge(data, user, str(path))
    sets = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"expected KEY=VALUE, got {item!r}", field="--set")
        sets[key.strip()] = _parse_text(key.strip(), value.strip())
    data = _merge(data, _dotted(sets, "--set"), "--set")
    return _from_dict(data, str(path) if path is not None else "--set")


def config_to_dict(cfg: LiftingConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_to_toml(cfg: LiftingConfig) -> str:
    """The config as TOML (scalars first, then one table per section), readable by load_config."""
    d = config_to_dict(cfg)
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for section, fields in d.items():
        if isinstance(fields, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- helpers
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(LiftingConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(LiftingConfig)}


def _field_type(key: str) -> type:
    """The declared type of dotted ``key`` (``"train.steps"`` -> int); InputError if unknown."""
    parts = key.split(".")
    tp = _section_types().get(parts[0])
    for p in parts[1:]:
        if tp is None or not dataclasses.is_dataclass(tp):
            tp = None
            break
        tp = typing.get_type_hints(tp).get(p)
    if tp is None or dataclasses.is_dataclass(tp) or len(parts) > 2:
        raise InputError(f"unknown config field {key!r}", field=key)
    return tp


def _parse_text(key: str, text: str):
    """A ``--set`` value as the type of its field (strings may be quoted or not)."""
    tp = _field_type(key)
    try:
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise InputError(f"{text!r} is not a {tp.__name__}", field=key) from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def _dotted(flat: dict, where: str) -> dict:
    out: dict = {}
    for key, v in flat.items():
        _field_type(key)
        *head, last = key.split(".")
        d = out
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return out


def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = dict(base)
    for k, v in new.items():
        if k not in base:
            raise InputError(f"unknown config field {k!r}", path=where or None, field=k)
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise InputError("expected a table", path=where or None, field=k)
            sub = _merge(base[k], v, where)
            out[k] = sub
        else:
            out[k] = v
    return out


def _check_value(value, tp, where: str, key: str):
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise InputError(
            f"expected {tp.__name__}, got {type(value).__name__} {value!r}", path=where, field=key
        )
    return value


_CHOICES = {"model.kind": MODEL_KINDS, "model.joints": JOINT_SETS, "data.source": DATA_SOURCES}
_POSITIVE = ("train.steps", "train.batch_size", "train.eval_batch_size", "model.hidden")


def _from_dict(data: dict, where: str) -> LiftingConfig:
    kwargs = {}
    for name, tp in _section_types().items():
        if dataclasses.is_dataclass(tp):
            sec = {}
            for f, ftp in typing.get_type_hints(tp).items():
                key = f"{name}.{f}"
                sec[f] = _check_value(data[name][f], ftp, where, key)
            kwargs[name] = tp(**sec)
        else:
            kwargs[name] = _check_value(data[name], tp, where, name)
    cfg = LiftingConfig(**kwargs)
    for key, choices in _CHOICES.items():
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        if value not in choices:
            raise InputError(f"{value!r} is not one of {', '.join(choices)}", path=where, field=key)
    for key in _POSITIVE:
        section, field = key.split(".")
        if getattr(getattr(cfg, section), field) <= 0:
            raise InputError("must be positive", path=where, field=key)
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise InputError("must lie in [0, 1)", path=where, field="model.dropout")
    if cfg.model.max_scale < 1.0:
        raise InputError("must be >= 1", path=where, field="model.max_scale")
    return cfg
