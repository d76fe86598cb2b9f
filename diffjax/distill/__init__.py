"""One- and few-step generation as tasks of the one trainer (DESIGN §7, §9).

Importing :mod:`diffjax.distill.tasks` (:mod:`diffjax.train` does) registers the tasks
(``config.task``) in :data:`diffjax.training.tasks.TASKS`, their networks in
:data:`diffjax.training.setup.NETWORKS` and the ``analytic:<mixture>`` teacher in
:data:`diffjax.training.frozen.SCHEMES`:

============================  ===================================================  =========
task                          method                                               teacher
============================  ===================================================  =========
``progressive``               progressive distillation (Salimans & Ho 2022)        required
``consistency_distillation``  consistency distillation (Song et al. 2023)          required
``consistency_training``      consistency training, iCT (Song & Dhariwal 2023)     none
``reflow``                    rectified-flow reflow (Liu et al. 2022)              required
``shortcut``                  shortcut models (Frans et al. 2024)                  none
``meanflow``                  MeanFlow (Geng et al. 2025)                          optional
============================  ===================================================  =========

``config.distill`` (:mod:`diffjax.distill.settings`) holds their keys; their students are
sampled by :func:`diffjax.sample` (``consistency``, ``mean_flow``/``shortcut`` of
:mod:`diffjax.samplers.few_step`; ``ddim`` on the progressive student's grid; ``euler`` for
reflow).
"""
