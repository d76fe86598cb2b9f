"""Quick-mode overrides shared by the sweeps (a few dozen steps, small evaluations: CI)."""

DIGITS_QUICK = {
    "training.num_steps": 40,
    "training.checkpoint_every": 40,
    "training.log_every": 20,
    "eval.num_samples": 100,
    "sampling.num_samples": 16,
}

TOY2D_QUICK = {
    "training.num_steps": 60,
    "training.checkpoint_every": 60,
    "training.log_every": 30,
    "eval.num_samples": 200,
    "eval.batch_size": 200,
    "sampling.num_samples": 200,
    "eval.likelihood_examples": 64,
}

# Text-to-image on shapes: a few dozen steps of a narrow model, small evaluations.
SHAPES_QUICK = {
    "model.ch": 16,
    "training.num_steps": 30,
    "training.checkpoint_every": 30,
    "training.log_every": 10,
    "training.eval_every": 30,
    "sampling.num_steps": 4,
    "sampling.num_samples": 16,
    "eval.num_samples": 60,
    "eval.batch_size": 60,
}
