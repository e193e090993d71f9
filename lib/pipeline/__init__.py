"""The commands the Makefile runs (cli), notebook-side helpers (notebook) and the reproducibility check."""
