"""Probabilistic weight fixing (Subia-Waud & Dasmahapatra, NeurIPS 2023): config, power-of-two centres."""
