"""pixelrefer_fast: PixelRefer and PixelRefer-Lite as fast drop-in Hugging Face models."""

__version__ = "0.1.0"
