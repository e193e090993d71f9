"""The instruments, used by every later stage: the one timing module (timing), the resource sampler,
energy, CUPTI kernels, the environment, peaks and FLOPs, output parity, accuracy, and the load primitives
(load, load_model)."""
