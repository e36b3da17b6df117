"""``train.mode = "mlm"``: pre-train the auxiliary MLM on the corpus (dynamic masking).

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --set train.mode=mlm
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config.run import RunConfig
from trainer.distributed import Dist
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel, selected_index
from trainer.modes.base import CorpusTask, init_priors_
from trainer.tokenizer import NUM_SPECIAL


class MLMTask(CorpusTask):
    """``train.mode = "mlm"``: pre-train the auxiliary model (sizes from [aux]) by masked
    language modelling with dynamic masking ([mlm]: BERT's 80/10/10 by default)."""

    model_kind = "mlm"

    def __init__(self, cfg: RunConfig, d: Dist):
        super().__init__(cfg, d, cfg.mlm)
        self.model = MLMModel(EncoderConfig.aux(cfg))
        init_priors_(self.model, self.unigram_counts)
        counts = self.unigram_counts.astype(np.float64)
        counts[:NUM_SPECIAL] = 0
        counts[NUM_SPECIAL:] += 1  # unseen tokens get a small, finite probability
        self.unigram_logp = torch.from_numpy(np.log(np.maximum(counts, 1e-300) / counts.sum()))
        self.announce(d, f"mlm, aux model {self.model.num_parameters():,} parameters")

    def _forward(self, model, b):
        # The labels (N,) were gathered on the host: their length is the selected count.
        index = selected_index(b["selected"], len(b["labels"]))  # (N,)
        logits = model(b["input_ids"], b["attention_mask"], positions_index=index)
        return logits.float()  # (N, V)

    def loss(self, model, b):
        logits = self._forward(model, b)  # (N, V)
        loss = F.cross_entropy(logits, b["labels"])
        return loss, {"mlm_correct": (logits.argmax(-1) == b["labels"]).sum().detach(),
                      "mlm_count": torch.tensor(float(len(b["labels"]))),
                      "tokens": b["attention_mask"].sum().detach()}

    def train_metrics(self, sums):
        return {"mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1.0)}

    def evaluate(self, model, d):
        sums = {"nll": 0.0, "correct": 0.0, "count": 0.0, "unigram_nll": 0.0}
        for b in self.heldout_batches(d):
            logits = self._forward(model, b)
            labels = b["labels"]
            sums["nll"] += F.cross_entropy(logits, labels, reduction="sum").item()
            sums["correct"] += (logits.argmax(-1) == labels).sum().item()
            sums["count"] += len(labels)
            sums["unigram_nll"] -= self.unigram_logp[labels.cpu()].sum().item()
        return sums

    def eval_metrics(self, sums):
        if sums["count"] == 0:
            return {}
        return {"eval_mlm_loss": sums["nll"] / sums["count"],
                "eval_mlm_accuracy": sums["correct"] / sums["count"],
                "eval_unigram_loss": sums["unigram_nll"] / sums["count"]}
