"""Deep Compression (Han, Mao & Dally, ICLR 2016): config, magnitude pruning, trained quantization."""
