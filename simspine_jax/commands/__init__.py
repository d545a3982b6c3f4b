"""Subcommands of ``simspine-jax`` beyond the core ones in :mod:`simspine_jax.cli`.

Each module here is a thin layer over one stage of the library: ``register(sub)`` adds its
argparse parsers to the ``sub`` subparsers object and sets ``run=handler`` as a default; the
handler receives the parsed arguments and returns the exit code. :mod:`simspine_jax.cli` lists
the modules in ``_COMMAND_MODULES`` and turns :class:`~simspine_jax.errors.SimSpineError` into a
one-line message with exit code 2.
"""
