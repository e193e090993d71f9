"""What a run is asked to do: run parameters (params), a model's config (model_config), the model registry
(models), the device (device) and the seeded inputs a model takes (inputs)."""
