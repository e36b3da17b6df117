"""``train.mode = "fast-online"``: Fast-ELECTRA with the frozen aux model in the training loop.

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml \\
        --set train.mode=fast-online --set generate.aux_checkpoint=runs/tiny/aux/checkpoints/...

The online baseline whose cost the offline path removes. It follows the offline data plan
exactly: the sample at global index g is position g % N of epoch g // N (N = corpus
sequences, generate.epochs epochs, generate.seed; ``trainer.data.order``), its temperature is the
schedule at that sample's u, and it is corrupted by the same ``corrupt_batch`` call as
``pipeline.generate`` makes, on this rank's device, inside the step. So with the same config
the discriminator sees, step for step, the very rows that ``rtd`` mode reads from a shard set
generated with that config: the two modes differ only in where the aux forward pass runs.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.config.run import RunConfig
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.corrupt import aux_autocast, corrupt_batch
from trainer.data.corpus_shards import open_corpus
from trainer.data.corpus_tokens import CorpusTokens
from trainer.data.manifest import manifest_fingerprint, sha256_uri
from trainer.data.order import progress, unpermute
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.rtd import RTDTask, SampleStream
from trainer.pretrained import load_generator


class FastOnlineTask(RTDTask):
    def __init__(self, cfg: RunConfig, d: Dist):
        c, gen = cfg.corruption, cfg.generate
        corpus = open_corpus(cfg)
        self.tokens = CorpusTokens(corpus, cfg.data.cache_dir)
        self.n = corpus.num_sequences
        self.aux = self.unigram = None
        # The data plan is part of the data: a resume must not change the order or schedule.
        fingerprint = f"{manifest_fingerprint(corpus.manifest)}:seed={gen.seed}:epochs={gen.epochs}"
        if c.replacement == "aux":
            if not gen.aux_checkpoint:
                raise UserError("train.mode = 'fast-online' with corruption.replacement = 'aux' "
                                "needs generate.aux_checkpoint (the frozen generator's "
                                "checkpoint folder)")
            self.aux = load_generator(gen.aux_checkpoint, d.device)
            if self.aux.cfg.vocab_size != corpus.vocab_size:
                raise UserError(f"generate.aux_checkpoint {gen.aux_checkpoint} has a vocabulary "
                                f"of {self.aux.cfg.vocab_size}, the corpus {corpus.root} "
                                f"{corpus.vocab_size}: use an aux trained on this tokenizer")
            fingerprint += ":" + sha256_uri(gen.aux_checkpoint.rstrip("/") + "/state.pt")
        if "unigram" in c.replacement or c.augmentation == "log_interp_unigram":
            self.unigram = corpus.unigram_counts()
        self.setup(cfg, d, SampleStream(gen.epochs, self.n, fingerprint,
                                        f"fast-online on {corpus.root}",
                                        "raise generate.epochs or lower train.max_steps"))

    def rows(self, start: int, count: int) -> dict[str, torch.Tensor]:
        g = np.arange(start, start + count, dtype=np.int64)
        epochs, positions = np.divmod(g, self.n)
        seq_ids = np.empty_like(g)
        u = np.empty(len(g), np.float64)
        gen = self.cfg.generate
        for e in np.unique(epochs):  # a batch can straddle an epoch boundary
            rows = epochs == e
            seq_ids[rows] = unpermute(positions[rows], self.n, gen.seed, int(e))
            u[rows] = progress(int(e), positions[rows], self.n, gen.epochs,
                               self.cfg.corruption.granularity)
        input_ids, attention_mask = self.tokens.batch(seq_ids)  # (B, T) each
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "seq_ids": torch.from_numpy(seq_ids), "epochs": torch.from_numpy(epochs),
                "u": torch.from_numpy(u)}

    def ready(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Corrupt the clean rows with the frozen aux, exactly as pipeline.generate does: in
        its precision (``aux_autocast``), not the trainer's."""
        ids, mask = b["input_ids"], b["attention_mask"]  # (B, T)
        corrupted = torch.empty_like(ids)
        labels = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
        temperature = torch.empty(len(ids), dtype=torch.float32, device=ids.device)
        epochs = b["epochs"].cpu()
        for e in epochs.unique().tolist():
            rows = (epochs == e).to(ids.device)
            with aux_autocast(ids.device):
                batch = KeyedBatch(ids[rows], b["seq_ids"][rows], self.cfg.generate.seed,
                                   int(e), attention_mask=mask[rows])
                out = corrupt_batch(batch, b["u"][rows.cpu()], self.cfg.corruption,
                                    aux=self.aux, unigram_counts=self.unigram,
                                    vocab_size=self.cfg.tokenizer.vocab_size)
            # Clones: inference-mode tensors cannot be saved for the discriminator's backward.
            corrupted[rows] = out.input_ids.clone()
            labels[rows] = out.labels.float()
            temperature[rows] = out.temperature.float()
        return {**b, "input_ids": corrupted, "labels": labels, "temperature": temperature}
