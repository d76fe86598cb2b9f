"""Sweeps, one job per module: :mod:`~diffjax.sweeps.declare` (the sweep file, trials),
:mod:`~diffjax.sweeps.identity` (what a trial ran), :mod:`~diffjax.sweeps.jobs` (one run as a
resumable job), :mod:`~diffjax.sweeps.launchers` (local threads or submitit),
:mod:`~diffjax.sweeps.running` (the scheduler), :mod:`~diffjax.sweeps.report` (tables and
plots), :mod:`~diffjax.sweeps.status` (``--status``). The command line is
:mod:`diffjax.sweep`."""
