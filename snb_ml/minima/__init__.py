"""Structure-based selection of distinct ML minima for DFT."""
