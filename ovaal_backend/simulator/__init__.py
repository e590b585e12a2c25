"""The offline simulator: the engine's loop with an oracle annotator that answers from ground truth."""
