"""Model loading: hub ids, local folders, GGUF files, the embedded default, tiny test models, and ``wrap`` for a
model already in memory."""

from hopscope.models.adapters import SUPPORTED_FAMILIES, Adapter, build_adapter
from hopscope.models.embedded import EMBEDDED, cache_root
from hopscope.models.loaded import Batch, LoadedModel
from hopscope.models.loading import DEFAULT_MODEL, ModelLoadError, load_model
from hopscope.models.tiny import TINY_FAMILIES, tiny
from hopscope.models.wrap import wrap

__all__ = [
    "Adapter", "Batch", "DEFAULT_MODEL", "EMBEDDED", "LoadedModel", "ModelLoadError", "SUPPORTED_FAMILIES",
    "TINY_FAMILIES", "build_adapter", "cache_root", "load_model", "tiny", "wrap",
]
