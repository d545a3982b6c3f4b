"""Deterministic shuffled mini-batches with a resumable position, prefetched to the device."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..errors import InputError
from ._data import LiftingData

__all__ = ["Batcher"]


class Batcher:
    """Endless mini-batches of a :class:`LiftingData`, epoch after epoch.

    Epoch ``e`` visits the samples in the order ``default_rng([seed, e]).permutation(N)``
    (or in order with ``shuffle=False``), in ``batch_size`` slices; with ``drop_remainder``
    (default) the last partial slice of an epoch is skipped, so every batch has the same shape
    and a jit'ed step compiles once. The position ``(epoch, index)`` names the next batch
    :meth:`__next__` returns; :meth:`state` / :meth:`restore` (or ``position=`` at
    construction) resume bit-exactly: the batches after a restore are those an uninterrupted
    run would have produced.

    Each batch is a dict of the dataset's numeric fields (:meth:`LiftingData.arrays`, or
    ``fields``) plus ``index`` (the sample rows, int32), placed on the device with
    ``jax.device_put``; ``prefetch`` batches are queued ahead, so the host-to-device copies
    overlap the jit'ed steps (``jax.device_put`` does not block). ``prefetch=0`` or
    ``to_device=False`` returns numpy arrays, one batch at a time.
    """

    def __init__(
        self,
        data: LiftingData,
        batch_size: int,
        seed: int = 0,
        *,
        fields=None,
        shuffle: bool = True,
        drop_remainder: bool = True,
        prefetch: int = 2,
        to_device: bool = True,
        position: tuple[int, int] = (0, 0),
    ):
        batch_size = int(batch_size)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        n = len(data)
        if n == 0 or (drop_remainder and n < batch_size):
            raise InputError(
                f"{n} samples cannot fill one batch of {batch_size}", field="batch_size"
            )
        arrays = data.arrays()
        if fields is not None:
            missing = [f for f in fields if f not in arrays]
            if missing:
                raise InputError(f"the dataset has no fields {missing}", field="fields")
            arrays = {f: arrays[f] for f in fields}
        self._arrays = arrays
        self.n = n
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.prefetch = max(0, int(prefetch)) if to_device else 0
        self.to_device = bool(to_device)
        self._order_epoch = -1
        self._order = None
        self._queue: deque = deque()
        self.restore({"epoch": position[0], "index": position[1]})

    # -- position
    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_remainder or rest == 0 else full + 1

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of the next batch returned."""
        return self._position

    def state(self) -> dict:
        """A JSON-serialisable position (with the settings that define the order)."""
        epoch, index = self._position
        return {
            "epoch": epoch,
            "index": index,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n": self.n,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
        }

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` (settings in it must match this batcher's)."""
        for key in ("seed", "batch_size", "n", "shuffle", "drop_remainder"):
            if key in state and state[key] != getattr(self, key):
                raise InputError(
                    f"saved {key}={state[key]!r} differs from this batcher's "
                    f"{getattr(self, key)!r}",
                    field=key,
                )
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise InputError(f"invalid position ({epoch}, {index})", field="position")
        if index == self.batches_per_epoch:
            epoch, index = epoch + 1, 0
        self._position = (epoch, index)
        self._cursor = (epoch, index)
        self._queue.clear()

    # -- batches
    def order(self, epoch: int) -> np.ndarray:
        """Sample rows of ``epoch`` in visiting order. Shape: (N,)."""
        if epoch != self._order_epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.n)
            else:
                self._order = np.arange(self.n)
            self._order_epoch = epoch
        return self._order

    def _host_batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        rows = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        batch = {k: v[rows] for k, v in self._arrays.items()}
        batch["index"] = rows.astype(np.int32)
        return batch

    def _advance(self, epoch: int, index: int) -> tuple[int, int]:
        index += 1
        return (epoch + 1, 0) if index >= self.batches_per_epoch else (epoch, index)

    def _enqueue(self) -> None:
        batch = self._host_batch(*self._cursor)
        if self.to_device:
            import jax

            batch = jax.device_put(batch)
        self._queue.append(batch)
        self._cursor = self._advance(*self._cursor)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while len(self._queue) < max(1, self.prefetch + 1):
            self._enqueue()
        self._position = self._advance(*self._position)
        return self._queue.popleft()
