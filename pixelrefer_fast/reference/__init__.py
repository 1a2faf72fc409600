"""Faithful ports of the official PixelRefer algorithms, quirks and Python loops included.

They are the oracles the tests compare the fast paths with and the baselines the benchmarks time them
against; they are slow on purpose and never used by the models:

- `region_full`: the full model's region encoder `MaskExtractor` and its k-means
  (docs/spec.md §5.3, §5.4);
- `region_lite`: Lite's region encoder with the Object-Centric Infusion (docs/spec.md §6);
- `vision`: an eager float64 NaViT SigLIP vision encoder (docs/spec.md §4, §14.9).

Importing this package imports only torch.
"""
