"""Soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017): config, the mixture prior, its kernels, its figures."""
