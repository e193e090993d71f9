"""PyTorch backends: eager, CUDA graph, torch.compile."""
