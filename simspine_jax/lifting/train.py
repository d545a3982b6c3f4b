"""Training a lifter: ``train_and_evaluate(config, workdir)``, laid out like flax's examples.

* data: the config's training and test splits (:func:`load_split`), mini-batches from
  :class:`~simspine_jax.datasets.Batcher` (deterministic in the seed, resumable position);
* optax AdamW with a staircase learning-rate schedule; one jit'ed train step
  (``value_and_grad`` of the lifter's loss, batch-norm statistics updated);
* orbax checkpoints in ``workdir/checkpoints`` every ``train.checkpoint_every`` steps and at the
  end, holding the parameters, batch-norm statistics, optimiser state, step, dropout RNG key,
  normalisation statistics and the batcher's position; a rerun in the same workdir restores the
  latest one and continues, and an interrupted-then-resumed run ends with the same bits as an
  uninterrupted one (the dropout key of step ``s`` is ``fold_in(key, s)``, batches come from
  the restored position, XLA CPU programs are deterministic);
* ``workdir/config.toml`` (the resolved config), ``workdir/metrics.jsonl`` (one JSON line per
  ``train.log_every`` steps: step, loss, learning rate, samples/s), a tqdm progress bar; at the
  end the test split is evaluated (:func:`.evaluate.evaluate_lifter`) into ``results.json`` and
  ``results.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import InputError
from .config import LiftingConfig, config_to_dict, config_to_toml, load_config

__all__ = [
    "TrainState",
    "load_split",
    "load_trained",
    "restore_checkpoint",
    "train_and_evaluate",
]

# fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = {
    "train.steps",
    "train.progress",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_batch_size",
}
_BATCH_FIELDS = ("keypoints_2d", "confidence", "keypoints_3d", "image_size")


@dataclass
class TrainState:
    """Everything a resumed run needs (a pytree of arrays in ``arrays``; JSON in ``meta``)."""

    arrays: dict  # params, batch_stats, opt_state, rng (key data), stats (normalisation)
    step: int
    data_position: dict


# ----------------------------------------------------------------------------- data
def _subjects(text: str):
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    return names or None


def load_split(config: LiftingConfig, split: str):
    """The ``"train"`` or ``"test"`` split the config names (a LiftingData)."""
    from ..datasets import load_dataset

    d = config.data
    hz = d.train_hz if split == "train" else d.test_hz
    subjects = _subjects(d.train_subjects if split == "train" else d.test_subjects)
    kw = {}
    if d.source == "synthetic":
        kw = dict(
            duration_s=d.duration_s,
            noise_px=d.noise_px,
            outlier_rate=d.outlier_rate,
            dropout=d.keypoint_dropout,
        )
    elif d.noise_px or d.outlier_rate or d.keypoint_dropout:
        raise InputError(
            "noise_px, outlier_rate and keypoint_dropout apply to synthetic data only "
            "(real data brings its own 2D detections)",
            field="data.noise_px",
        )
    return load_dataset(
        d.source,
        d.root or None,
        split,
        sample_hz=hz if hz > 0 else None,
        seed=config.seed,
        subjects=subjects,
        **kw,
    )


# ----------------------------------------------------------------------------- optimiser
def make_optimizer(config: LiftingConfig) -> optax.GradientTransformation:
    t = config.train
    schedule = optax.exponential_decay(t.learning_rate, t.decay_steps, t.decay_rate, staircase=True)
    return optax.adamw(schedule, weight_decay=t.weight_decay)


def learning_rate(config: LiftingConfig, step: int) -> float:
    t = config.train
    return float(t.learning_rate * t.decay_rate ** (step // t.decay_steps))


def make_train_step(lifter, tx):
    """The jit'ed step: (params, batch_stats, opt_state, batch, key, step) -> updated + metrics."""

    def step_fn(params, batch_stats, opt_state, batch, key, step):
        rng = jax.random.fold_in(key, step)
        grad_fn = jax.value_and_grad(lifter.loss, has_aux=True)
        (_, (new_stats, metrics)), grads = grad_fn(params, batch_stats, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return params, new_stats, opt_state, metrics

    return jax.jit(step_fn)


# ----------------------------------------------------------------------------- checkpoints
def _manager(workdir: Path):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), options=opts, item_names=("state", "meta")
    )


def _save(mngr, state: TrainState) -> None:
    import orbax.checkpoint as ocp

    meta = {"step": state.step, "data_position": state.data_position}
    mngr.save(
        state.step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state.arrays), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    mngr.wait_until_finished()


def _restore(mngr, template: dict | None):
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    if step is None:
        return None
    state_arg = ocp.args.StandardRestore(template)
    out = mngr.restore(step, args=ocp.args.Composite(state=state_arg, meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]


def restore_checkpoint(workdir: str | Path, template: dict | None = None):
    """The latest checkpoint of ``workdir``: (arrays pytree, meta dict), or None if none.

    ``template``: a pytree of the arrays' structure (restored into its layout); without one the
    arrays come back as nested dicts.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        return None
    mngr = _manager(workdir)
    try:
        return _restore(mngr, template)
    finally:
        mngr.close()


def _check_same_config(saved: LiftingConfig, config: LiftingConfig, path: Path) -> None:
    a, b = config_to_dict(saved), config_to_dict(config)
    for section, fields in a.items():
        items = fields.items() if isinstance(fields, dict) else [(None, fields)]
        for name, value in items:
            key = section if name is None else f"{section}.{name}"
            new = b[section] if name is None else b[section][name]
            if new != value and key not in _RESUMABLE_CHANGES:
                raise InputError(
                    f"the run in this workdir has {key} = {value!r}, not {new!r}; "
                    "use a new --workdir to train another configuration",
                    path=str(path),
                    field=key,
                )


def load_trained(workdir: str | Path):
    """A trained lifter from ``workdir``: (config, lifter, variables, step)."""
    from . import make_lifter

    workdir = Path(workdir)
    cfg_path = workdir / "config.toml"
    if not cfg_path.is_file():
        raise InputError("no config.toml: not a train-lifter workdir", path=str(workdir))
    config = load_config(cfg_path)
    restored = restore_checkpoint(workdir)
    if restored is None:
        raise InputError("no checkpoint to evaluate", path=str(workdir / "checkpoints"))
    arrays, meta = restored
    stats = {k: np.asarray(v, np.float32) for k, v in arrays["stats"].items()}
    lifter = make_lifter(config, stats)
    template = lifter.init(jax.random.key(0))
    variables = jax.tree_util.tree_map(
        lambda t, a: jnp.asarray(a, t.dtype),
        template,
        {"params": arrays["params"], "batch_stats": arrays["batch_stats"]},
    )
    return config, lifter, variables, int(meta["step"])


# ----------------------------------------------------------------------------- training
def _truncate_log(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train_and_evaluate(config: LiftingConfig, workdir: str | Path, *, evaluate: bool = True):
    """Train the configured lifter in ``workdir`` (resuming its latest checkpoint), then evaluate.

    Returns the evaluation results (``results.json``'s content), or, with ``evaluate=False``,
    a summary of the training (steps, final loss, samples/s).
    """
    from ..datasets import Batcher
    from . import make_lifter
    from .models import compute_stats

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.toml"
    if cfg_path.is_file():
        _check_same_config(load_config(cfg_path), config, cfg_path)
    cfg_path.write_text(config_to_toml(config))

    train = load_split(config, "train")
    stats = compute_stats(train, config.model.joints)
    lifter = make_lifter(config, stats)
    tx = make_optimizer(config)
    key_init, key_dropout = jax.random.split(jax.random.key(config.seed))
    variables = lifter.init(key_init)
    arrays = {
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(variables["params"]),
        "rng": jax.random.key_data(key_dropout),
        "stats": stats,
    }
    step = 0
    fields = list(_BATCH_FIELDS)
    if config.model.kind == "kinematic" and config.train.angle_weight > 0:
        if train.coordinates is None:
            raise InputError("angle_weight > 0 needs coordinates in the data", field="train")
        fields.append("coordinates")
    if train.valid_3d is not None:  # e.g. Human3.6M: 15 of the 37 keypoints have 3D truth
        fields.append("valid_3d")
    batcher = Batcher(train, config.train.batch_size, seed=config.seed, fields=fields)

    mngr = _manager(workdir)
    log_path = workdir / "metrics.jsonl"
    restored = _restore(mngr, arrays)
    if restored is not None:
        arrays, meta = restored
        step = int(meta["step"])
        batcher.restore(meta["data_position"])
        stats = {k: np.asarray(v, np.float32) for k, v in arrays["stats"].items()}
        lifter = make_lifter(config, stats)
        _truncate_log(log_path, step)
    else:
        log_path.unlink(missing_ok=True)

    train_step = make_train_step(lifter, tx)
    params, batch_stats, opt_state = arrays["params"], arrays["batch_stats"], arrays["opt_state"]
    key = jax.random.wrap_key_data(jnp.asarray(arrays["rng"]))
    t_cfg = config.train
    bar = None
    if t_cfg.progress and step < t_cfg.steps:
        from tqdm import tqdm

        bar = tqdm(total=t_cfg.steps, initial=step, desc="train-lifter", unit="step")
    window_loss, window_n = [], 0
    t_window = time.perf_counter()
    t_first_done = None
    samples_timed = 0
    last_loss = None
    try:
        while step < t_cfg.steps:
            batch = next(batcher)
            batch = {k: v for k, v in batch.items() if k in fields}
            params, batch_stats, opt_state, metrics = train_step(
                params, batch_stats, opt_state, batch, key, jnp.asarray(step, jnp.int32)
            )
            step += 1
            window_loss.append(metrics["loss"])
            window_n += t_cfg.batch_size
            if t_first_done is None:
                jax.block_until_ready(metrics["loss"])
                t_first_done = time.perf_counter()  # the first step includes compilation
            else:
                samples_timed += t_cfg.batch_size
            if bar is not None:
                bar.update(1)
            if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                losses = np.asarray(jax.device_get(window_loss), np.float64)
                now = time.perf_counter()
                last_loss = float(losses.mean())
                line = {
                    "step": step,
                    "loss": last_loss,
                    "learning_rate": learning_rate(config, step - 1),
                    "samples_per_s": round(window_n / max(now - t_window, 1e-9), 1),
                }
                line.update({k: float(v) for k, v in jax.device_get(metrics).items()})
                line["loss"] = last_loss  # the window's mean, not the last batch's
                with open(log_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4g}")
                window_loss, window_n, t_window = [], 0, now
            if step % t_cfg.checkpoint_every == 0 or step == t_cfg.steps:
                arrays = dict(arrays, params=params, batch_stats=batch_stats, opt_state=opt_state)
                _save(mngr, TrainState(arrays, step, batcher.state()))
    finally:
        if bar is not None:
            bar.close()
        mngr.close()
    jax.block_until_ready(params)
    t_end = time.perf_counter()
    throughput = None
    if t_first_done is not None and samples_timed:
        throughput = samples_timed / max(t_end - t_first_done, 1e-9)
    summary = {"steps": step, "final_loss": last_loss, "train_samples_per_s": throughput}
    (workdir / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not evaluate:
        return summary
    from .evaluate import evaluate_lifter, write_results

    test = load_split(config, "test")
    variables = {"params": params, "batch_stats": batch_stats}
    results = evaluate_lifter(lifter, variables, test, batch_size=t_cfg.eval_batch_size)
    results["train"] = summary
    write_results(results, workdir / "results.json", workdir / "results.md")
    return results
