"""What the Hugging Face import and export share: the optional ``transformers`` dependency.

Its own module so that the command (cli.py) imports the importer and the exporter, and neither
imports the command back.
"""

from __future__ import annotations

from types import ModuleType

from trainer.errors import UserError


def require_transformers() -> ModuleType:
    """The ``transformers`` module, or a UserError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face interop needs the optional 'hf' dependencies "
                        "(transformers, safetensors): pip install -e '.[hf]'") from None
    return transformers
