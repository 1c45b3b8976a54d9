"""Sparsity-quantization joint learning by ADMM (Yang, Gui, Zhu & Liu, CVPR 2020): config, knapsacks, projections."""
