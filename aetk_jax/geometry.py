"""Latent-space geometry: pullback metrics and neural geodesics. (Being written under issue 6.)"""
