"""ControlNet (Zhang et al. 2023): control maps as rails beside a frozen text-to-image base.

:mod:`~diffjax.controlnet.network` the network, :mod:`~diffjax.controlnet.task` the
``controlnet`` training task (registered in :data:`diffjax.training.tasks.TASKS` when
:mod:`diffjax.train` imports it), :mod:`~diffjax.controlnet.settings` ``config.controlnet``,
:mod:`~diffjax.controlnet.maps` the control kinds and their extraction,
:mod:`~diffjax.controlnet.editing` image-to-image, inpainting and control at sampling time.
"""
