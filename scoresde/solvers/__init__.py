"""Solvers: predictors, correctors, the torchsde and torchdiffeq adapters, DDPM / DDIM."""
