"""Tasks that drive the engine: training with every method plugged in, evaluation, the bench, pruning workflows."""
