"""A run's plan of points (plan), the benchmark passes over them (bench), the load stage (load_stage)
and the timing fidelity check (fidelity)."""
