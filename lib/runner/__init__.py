"""Runs a notebook in a kernel of its own (kernel) and shows its progress on the terminal (terminal)."""
