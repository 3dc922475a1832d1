"""The experiment harness: grid runner, summaries, plots and the evidence tables (not used by the training scripts)."""
