"""``python -m experiments.intuition [--out=DIR] [--html=DIR] [--only=NAME,...] [--fast] [--seed=N]``."""
from experiments.intuition.gallery import main

if __name__ == "__main__":
    main()
