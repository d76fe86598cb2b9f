"""Shared test fixtures, and how ``python -m pytest -n 2 tests`` spreads the suite over its
two xdist workers.

Time budget: the whole suite in under about 10 minutes on 2 cores (10:11 with
``python -m pytest -n 2 tests``, 2-core development VM, 2026-12-01). Five things here serve
it:

* XLA's backend optimisation is off (``JAX_DISABLE_MOST_OPTIMIZATIONS``, below), except for
  the fixtures that train for hundreds of steps (:func:`optimized_xla`).
* XLA:CPU's legacy fusion emitters, which compile faster (tests/_xla_flags.py).
* A persistent XLA compilation cache for the session, shared by both workers (programs that
  take :data:`MIN_COMPILE_SECONDS` or more to compile), and one shared by the
  ``python -m diffjax.main`` processes the tests start (through ``$DIFFJAX_JAX_CACHE``):
  an identical program (the tiny config's train step, a sampler) is compiled once and read
  back by every later test or process. JAX keys an entry by the program itself (HLO, compile options,
  devices, versions; see diffjax.compile_cache), so a read-back program is the program a fresh
  compile would give, and every test still computes its numbers.
* Tests that share an expensive module-scoped fixture (a trained run, a trained detector) run
  on one worker (:data:`GROUPS`, through the scheduler chosen here, so that the command stays
  ``python -m pytest -n 2 tests``): under xdist's plain ``--dist load`` each worker that gets
  one of them builds the fixture again.
* The longest groups and tests are handed out first (:data:`COSTS`); the many short tests
  fill in at the end, so both workers finish together.
"""
import contextlib
import os

# The suite compiles hundreds of small programs and runs each for a few steps, so XLA's
# backend optimisation (LLVM's passes over the generated CPU code) costs more than it saves:
# JAX's own switch for this turns it off for the tests and every process they start (it
# leaves the programs' HLO and their semantics alone; no fast-math). About a fifth of the
# suite's time on 2 cores. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` tests the optimised code.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import _xla_flags  # noqa: E402

_xla_flags.configure()

import jax  # noqa: E402
import pytest  # noqa: E402

# diffjax.main (in-process or as a subprocess) must not fill the real ~/.cache/diffjax/jax;
# the session's shared cache (``compilation_cache`` below) replaces this once tests run.
os.environ.setdefault("DIFFJAX_JAX_CACHE", "off")

# Modules whose tests share expensive module-scoped fixtures (or, for ``power_ema``, one
# compiled train step read through the compilation cache), by group; a group runs on one
# worker.
GROUPS = {
    "test_sweep.py": "sweep",
    "test_train.py": "train",
    "test_t2i.py": "text_base",  # both read the text_base fixture
    "test_controlnet.py": "text_base",
    "test_distill_guided.py": "text_base",
    "test_controlnet_network.py": "controlnet_network",
    "test_shapes_eval.py": "shapes_eval",
    "test_intuition_page.py": "intuition_page",
    "test_latent.py": "latent",
    "test_main.py": "main",
    "test_evaluate.py": "evaluate",
    "test_ema.py": "power_ema",
    "test_autoguidance_cli.py": "power_ema",
    "test_models.py": "models",
    "test_models_context.py": "models_context",
    "test_text_encoder.py": "text_encoder",
    "test_autoencoder_diffusers.py": "autoencoder_diffusers",
    "test_shapes_data.py": "shapes_data",
    "test_autoencoder_adversarial.py": "autoencoder_adversarial",
    "test_latent_configs.py": "latent_configs",
    "test_run_sampling_options.py": "run_sampling_options",  # one trained module fixture
}
# The 8-device test runs alone (in a process of its own): apart from the rest of
# test_train.py, whose DDPM++ step it must not wait for (see tests/test_train.py).
EIGHT_DEVICES = "test_train.py::test_eight_simulated_devices_and_pmap_give_the_one_device_loss_curve"
# Rough seconds of the longest groups and ungrouped tests (``--durations`` of a run of the
# suite with both workers busy on a loaded machine): the order in which they are handed out,
# longest first. Unlisted ones follow in collection order and fill in at the end.
COSTS = {
    "train": 300,
    EIGHT_DEVICES: 210,
    "text_base": 240,
    "sweep": 150,
    "intuition_page": 140,
    "shapes_eval": 115,
    "latent": 140,
    "autoencoder_adversarial": 60,
    "latent_configs": 45,
    "run_sampling_options": 35,
    "models": 75,
    "test_reliability.py::test_kill_9_at_four_moments_then_the_same_command_equals_the_straight_run": 70,
    "main": 65,
    "models_context": 50,
    "power_ema": 45,
    "controlnet_network": 40,
    "test_objectives.py::test_elbo_weighting_is_invariant_to_schedule_and_time_sampling": 35,
    "test_samplers.py::test_explicit_and_tuned_grids": 33,
    "test_dit.py::test_mmdit_joint_attention_with_tied_streams_is_a_dit_block_on_the_joined_sequence": 31,
    "test_reliability.py::test_sigterm_checkpoints_the_current_step_exits_0_and_the_rerun_resumes_there": 30,
    "evaluate": 30,
    "test_intuition.py::test_spectrum_high_frequencies_drown_first_and_return_last": 29,
    "test_intuition.py::test_few_steps_ode_solvers_converge_and_ddpm_needs_many_steps": 28,
    "test_likelihood.py::test_bits_per_dim_of_8bit_data_under_the_flow_is_the_exact_bin_code_length": 28,
    "test_reliability.py::test_nonfinite_steps_are_skipped_and_counted_or_stop_the_run_and_never_reach_a_checkpoint": 26,
    "text_encoder": 25,
    "test_trainer_parts.py::test_two_accumulated_micro_batches_of_64_give_the_update_of_one_batch_of_128[scan]": 24,
    "test_trainer_parts.py::test_sampler_compiles_once_for_new_parameters_and_splits_rows_over_8_devices": 23,
    "test_latent_configs.py::test_imagenet256_dit_takes_a_step_on_mock_imagenet_latents": 22,
    "test_inception.py::test_network_input_is_pytorch_bilinear_resize_of_rgb[size1]": 22,
    "test_sampling_api.py::test_gradient_through_the_adaptive_sampler_matches_finite_differences": 20,
    "shapes_data": 11,
    "autoencoder_diffusers": 5,
}


def _name(nodeid: str) -> str:
    return nodeid.split("/")[-1]


def _group(nodeid: str) -> "str | None":
    name = _name(nodeid)
    return None if name == EIGHT_DEVICES else GROUPS.get(name.split("::")[0])


def _unit(nodeid: str) -> str:
    """The unit of work a worker is handed whole: the test's group, or the test alone."""
    return _group(nodeid) or nodeid


def pytest_collection_modifyitems(config, items):
    """Under xdist, orders the items longest group or test first (:data:`COSTS`; stable, so
    a module's tests stay together): the workers report this order to the scheduler."""
    if config.getoption("numprocesses", None) or hasattr(config, "workerinput"):
        items[:] = sorted(items, key=lambda item: -COSTS.get(
            _group(item.nodeid) or _name(item.nodeid), 0))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n N`` without ``--dist``: xdist's scope scheduling with :func:`_unit` as the scope,
    units handed out in collection order. (xdist's ``--dist loadgroup`` would need
    ``xdist_group`` marks written into the test ids, which pytest 9 no longer lets it do.)"""
    args = [str(a) for a in config.invocation_params.args]
    if config.getoption("dist") != "load" or any(a.startswith(("--dist", "-d")) for a in args):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    config.option.loadscopereorder = False  # keep the collection's (cost) order
    return GroupScheduling(config, log)


def _session_dir(tmp_path_factory, name: str) -> str:
    """A directory that every xdist worker of this session shares."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / name
    path.mkdir(exist_ok=True)
    return str(path)


# Only programs that take this long to compile are written to the cache: the many tiny
# ones are not worth a file each (JAX's in-memory caches already share those within a
# process), and every write scans the cache directory.
MIN_COMPILE_SECONDS = 0.5


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """The session's persistent XLA compilation cache (see the module docstring): one for
    this process and the other workers, one for the ``diffjax.main`` processes tests start
    (main stores all its programs). Entries are read and written under JAX's file lock
    (diffjax.compile_cache), so processes can share them."""
    from diffjax import compile_cache

    path = _session_dir(tmp_path_factory, "xla_cache")
    compile_cache.enable(path, min_compile_seconds=MIN_COMPILE_SECONDS)
    previous = os.environ.get(compile_cache.ENV)
    os.environ[compile_cache.ENV] = _session_dir(tmp_path_factory, "xla_cache_main")
    yield path
    os.environ[compile_cache.ENV] = previous if previous is not None else "off"


@pytest.fixture(scope="session")
def text_base(tmp_path_factory):
    """The tiny text-to-image run of tests/_text_base.py, trained once: tests/test_t2i.py
    checks it, tests/test_controlnet.py trains ControlNets on it as their base."""
    import _text_base

    return _text_base.train_base(str(tmp_path_factory.mktemp("text_base")))


@pytest.fixture(scope="session")
def optimized_xla():
    """A context manager under which XLA optimises fully again (see the top of this file):
    for the few fixtures that train a model for hundreds of steps, where the optimised
    program pays for its compile many times over."""

    @contextlib.contextmanager
    def optimized():
        previous = jax.config.values["jax_disable_most_optimizations"]
        jax.config.update("jax_disable_most_optimizations", False)
        try:
            yield
        finally:
            jax.config.update("jax_disable_most_optimizations", previous)

    return optimized


@pytest.fixture
def x64():
    """Runs a test with float64 enabled (closed-form checks at 1e-10 need it)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def xla_cache(compilation_cache):
    """For the tests that train the same tiny program several times (a resumed run compiles
    its step again): the second compile of a program that took :data:`MIN_COMPILE_SECONDS`
    or more is a read of the session's compilation cache."""
    yield compilation_cache
