"""Normalizing flows from zuko and nflows, on ConVAE latents or on particles (a library)."""
