"""Three kernels of one function, the mixture prior's -log p(w): exact (reference), grid (torch), grid (compiled)."""
