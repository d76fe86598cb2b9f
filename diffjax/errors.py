"""The errors diffjax raises on purpose, in one place that imports nothing of diffjax.

Every module that reports a problem imports its error from here, so reporting never pulls in
the module that found the problem (``checkpoint`` once imported ``config_validation`` for
:class:`ConfigError`, which imported ``train``, which imported ``checkpoint``). The old paths
(``diffjax.config_validation.ConfigError``, ``diffjax.checkpoint.WorkdirError``,
``diffjax.train.NonFiniteError``) re-export these classes.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value or key that cannot work; the message is one line naming the key, the
    value and what is accepted."""


class WorkdirError(ConfigError):
    """The workdir cannot be used for this run (unwritable, or holds an incompatible run, or
    its checkpoints were written with other data-loader settings)."""


class CheckpointReadError(OSError):
    """A checkpoint could not be read for a reason other than damage (e.g. an I/O error that
    outlasted the retries); an older checkpoint is not a substitute, so the run stops."""


class NonFiniteError(FloatingPointError):
    """Raised under ``training.nonfinite="stop"`` at the first non-finite loss or gradient."""


class BrokenCheckpointWarning(UserWarning):
    """A checkpoint that does not restore was skipped."""
