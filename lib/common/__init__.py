"""What every stage uses: errors, hashes and atomic writes (cache), the NVML handle of a GPU (gpu),
summary statistics (stats) and a run folder's state: locks, fingerprint, run.json (runstate)."""
