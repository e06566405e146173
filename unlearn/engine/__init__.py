"""LightningModules: diffusion training and sampling, erasure, distillation."""
