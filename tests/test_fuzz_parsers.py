"""Fuzzed parsers (issue 9), a small CI budget of the properties in experiments/fuzz_parsers.py.

Every parser (TRC, Storage, .osim, IK setup, .npz) given random valid files reads them back
exactly (a random .osim: every number written reaches the loaded tree), and given mutated
ones (byte flips, truncation, deleted/duplicated/swapped lines and fields, swapped columns,
odd numbers and words; for the .npz odd entries, dtypes, shapes, indices and meta JSON)
returns a result that satisfies the format's invariants or raises our InputError, never
another exception. ``derandomize``: the same examples on every run, so CI is
reproducible; ``python experiments/fuzz_parsers.py`` explores thousands of fresh ones.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "fuzz_parsers.py"


def _load():
    spec = importlib.util.spec_from_file_location("fuzz_parsers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fuzz = _load()

# examples per property: ~2-3 s each on an idle 2-core machine, < 25 s in all
BUDGET = {
    "trc_roundtrip": 40,
    "trc_mutated": 60,
    "storage_roundtrip": 40,
    "storage_mutated": 60,
    "osim_random": 40,
    "osim_mutated": 60,
    "ik_setup_mutated": 60,
    "npz_mutated": 60,
    "npz_roundtrip": 30,
}


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_fuzz_property(name):
    assert set(BUDGET) == set(fuzz.PROPERTIES)
    fuzz.TALLY.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IK setup warnings of mutated files are expected
        fuzz.make_test(name, BUDGET[name], derandomize=True)()
    assert fuzz.TALLY["read"] + fuzz.TALLY["refused"] >= BUDGET[name]
    if name.endswith("_roundtrip"):
        assert fuzz.TALLY["refused"] == 0


def test_mutations_change_files_and_checks_can_fail(monkeypatch):
    """The fuzzer's own parts: each operation changes a file, and a check fails when its
    parser raises anything but InputError (so the properties can fail)."""
    import numpy as np

    import simspine_jax.io

    raw = b"a\tb\tc\n1\t2\t3\n4\t5\t6\n"
    for op in fuzz.OPS:
        if op != "odd_word":  # needs XML text
            assert fuzz.mutate(raw, [(op, 1, 1, 2)]) != raw, op
    assert fuzz.mutate(b"<a>word</a>", [("odd_word", 0, 1, 0)]) == b"<a>perhaps</a>"
    assert fuzz.mutate(b"<a>1.5</a>", [("odd_number", 0, 0, 0)]) == b"<a>1e308</a>"

    def broken(path):
        raise KeyError("a parser bug")

    monkeypatch.setattr(simspine_jax.io, "read_trc", broken)
    with pytest.raises(KeyError):
        fuzz.check_trc_mutated((["A"], np.array([0.0, 1.0]), np.zeros((2, 1, 3)), "m"), [])
