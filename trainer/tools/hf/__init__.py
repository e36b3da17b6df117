"""Hugging Face interop (`fast-electra hf import|export`, optional extra `hf`).

    cli.py             the command
    importer.py        an HF *ForMaskedLM folder -> an aux checkpoint
    exporter.py        a checkpoint -> ElectraForPreTraining / ElectraForMaskedLM
    common.py          the optional transformers dependency
"""
