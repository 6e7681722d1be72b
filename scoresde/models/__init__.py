"""Score networks: a DDPM++-style UNet and an MLP."""
