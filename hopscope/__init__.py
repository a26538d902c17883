"""hopscope: locate, explain and repair multi-hop reasoning and factual-recall failures in transformer LMs."""

__version__ = "0.1.0"

from hopscope.models import load_model  # noqa: E402

__all__ = ["load_model", "__version__"]
