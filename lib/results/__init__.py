"""A run folder read back: ``load_run`` and the tidy tables (run)."""
