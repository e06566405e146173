"""LightningModules: `DiffusionEngine` (a text-to-image model: training, sampling) and the method
engines on the shared `ErasureEngine` lifecycle: `FineTuneEngine` (prediction-matching methods:
ESD, concept ablation), `ClosedFormEngine` (weight editors: UCE), `MaskErasureEngine`
(minimalist masks), `DMD2Engine` (distillation)."""
