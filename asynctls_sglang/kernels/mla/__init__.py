"""Sparse decode attention for MLA layers in absorbed form: one latent head (Hk = 1) of
D = Dv + rope channels; V is the first Dv channels of the same rows, read once."""
