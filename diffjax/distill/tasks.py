"""Importing this module registers every few-step task, its networks and the analytic teacher
(the table of :mod:`diffjax.distill`). The package itself imports nothing, so its light parts
(``config.distill``'s defaults in :mod:`diffjax.distill.settings`) load without the trainer.
"""
from diffjax.distill import (consistency, meanflow, progressive, reflow,  # noqa: F401
                             settings, shortcut, teacher)
