"""The experiment harness: grid runner, summaries, reports, plots and the evidence tables (not imported by the training scripts)."""
