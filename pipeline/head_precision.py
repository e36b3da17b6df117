"""The precision of the aux LM head on a GPU (``generate.head_precision``): the head wrapped to
run in bf16 autocast or TF32 matmuls, its output cast back to float32.
"""

from __future__ import annotations

import os
import threading

from pipeline.errors import GenerateError

# One process-wide lock: torch's float32 matmul precision is global, so two threads of a
# worker must not set and restore it around each other's head (the draws would depend on
# their interleaving).
_TF32_LOCK = threading.Lock()


def with_head_precision(corrupter, precision: str):
    """``corrupter`` (a loaded ``Corrupter``) with its aux's LM head run in ``precision``
    (``generate.head_precision``); unchanged for fp32 or without an aux. The head's output is
    cast back to float32 for the log-softmax and the sampling."""
    if precision == "fp32" or corrupter.aux is None:
        return corrupter
    if not str(corrupter.device).startswith("cuda"):
        raise GenerateError(
            f"generate.head_precision = {precision!r} needs a GPU, but this worker runs the "
            f"aux on {corrupter.device} (host {os.uname().nodename}): a CPU computes the head "
            "in fp32 only; set generate.head_precision = 'fp32' or give the workers GPUs")
    import torch

    class PrecisionHead(torch.nn.Module):
        def __init__(self, head: torch.nn.Module):
            super().__init__()
            self.head = head

        def forward(self, hidden, *args, **kwargs):
            if precision == "bf16":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return self.head(hidden, *args, **kwargs).float()
            with _TF32_LOCK:
                before = torch.get_float32_matmul_precision()
                torch.set_float32_matmul_precision("high")  # TF32 tensor cores
                try:
                    return self.head(hidden, *args, **kwargs)
                finally:
                    torch.set_float32_matmul_precision(before)

    corrupter.aux.head = PrecisionHead(corrupter.aux.head)
    return corrupter
