"""The model files `fast-electra hf export` writes into remote-code model folders:
configuration_fast_electra.py and modeling_fast_electra.py (torch and transformers only)."""
