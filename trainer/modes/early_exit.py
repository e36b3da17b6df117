"""``train.mode = "early-exit"``: the adaptive early-exit generator (Kang et al., "Maximizing
Efficiency of Language Model Pre-training for Learning Representation").

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml \\
        --set train.mode=early-exit --set aux.num_layers=4 --set joint.exit_layers=[1,2,3,4]

The generator has an MLM head at each of joint.exit_layers (paper: 3/6/9/12). All exits learn
every step, deeper ones with larger weight (exit k of K weighs k / (1 + ... + K)); one exit per
step, drawn from the exit-selection probabilities P by a hash of (train.seed, step) so every
rank draws the same, supplies the replacements. Every joint.exit_update_every steps

    P <- softmax(P + alpha * clip(acc_t - acc_{t-1}, -1, 1) * R),   R = [0, 1, ..., K-1]

with acc the discriminator's RTD accuracy over those steps on all ranks (the first update only
records acc, there is no acc_{t-1} yet). P, the previous accuracy and the counts since the last
update are buffers of the model, so they are checkpointed and a resume continues exactly.
P and the chosen exit are logged (exit_p<layer>, exit_layer).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import distributed
from trainer.config.run import RunConfig
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMHead, _num_parameters
from trainer.modes.joint import JointModel, JointTask


def exit_layers(cfg: RunConfig) -> list[int]:
    """joint.exit_layers, or 4 evenly spaced exits up to aux.num_layers."""
    n = cfg.aux.num_layers
    exits = cfg.joint.exit_layers or sorted({max(1, round(n * k / 4)) for k in range(1, 5)})
    if exits[-1] != n:
        raise UserError(f"joint.exit_layers = {exits} must end at the generator's last layer, "
                        f"aux.num_layers = {n}")
    # One exit always supplies the replacements and P never moves: the run would be
    # train.mode = "electra" under another name, which a comparison would silently mislabel.
    if len(exits) < 2:
        raise UserError(f"train.mode = 'early-exit' needs at least 2 generator exits, got "
                        f"joint.exit_layers = {exits} (aux.num_layers = {n}); set "
                        "aux.num_layers >= 2 (the exits default to 4 evenly spaced layers) or "
                        "joint.exit_layers to 2 or more layers ending at aux.num_layers, or use "
                        "train.mode = 'electra'")
    return exits


class EarlyExitGenerator(nn.Module):
    """An encoder with an MLM head (tied to the word embeddings) after each exit layer."""

    def __init__(self, cfg: EncoderConfig, exits: list[int]):
        super().__init__()
        self.cfg, self.exits = cfg, exits
        self.encoder = Encoder(cfg)
        self.heads = nn.ModuleList(MLMHead(cfg, self.encoder.word_emb) for _ in exits)

    def forward(self, input_ids, attention_mask, positions_mask=None, positions_index=None
                ) -> list[torch.Tensor]:
        """[(N, V)] logits at positions_mask (or positions_index, ``MLMHead``), one per exit,
        from one encoder pass."""
        hidden = self.encoder.exits(input_ids, attention_mask, self.exits)  # [(B, T, H)]
        return [head(h, positions_mask, positions_index)
                for head, h in zip(self.heads, hidden, strict=True)]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return _num_parameters(self, exclude_embeddings)


class EarlyExitModel(JointModel):
    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.exits = self.generator.exits
        k = len(self.exits)
        probs = cfg.joint.exit_init_probs or [i / (k * (k + 1) / 2) for i in range(1, k + 1)]
        if len(probs) != k:
            raise UserError(f"joint.exit_init_probs has {len(probs)} values for {k} exits "
                            f"({self.exits})")
        self.register_buffer("exit_probs", torch.tensor(probs, dtype=torch.float64))
        self.register_buffer("exit_acc_prev", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("exit_counts", torch.zeros(2, dtype=torch.float64))  # right, all
        weights = torch.arange(1, k + 1, dtype=torch.float32)
        self.loss_weights = (weights / weights.sum()).tolist()
        # The exits' layers on the model's device, for exit_layer_sum when the exit is chosen
        # there; not saved (it is the config's).
        self.register_buffer("exit_layer_ids", torch.tensor(self.exits, dtype=torch.float64),
                             persistent=False)

    def build_generator(self, g_cfg: EncoderConfig, cfg: RunConfig) -> nn.Module:
        return EarlyExitGenerator(g_cfg, exit_layers(cfg))

    def generate(self, masked_ids, attention_mask, index, targets, exit_index):
        """As ``JointModel.generate``, every exit's loss weighted; the sampling logits are
        exit ``exit_index``'s: an int, or a 0-d long tensor chosen on the device (then picked
        by ``torch.where`` over the exits, under no_grad: one transient (N, V) more, no host
        read)."""
        logits = self.generator(masked_ids, attention_mask, positions_index=index)  # [(N, V)]
        mlm_loss = sum(w * F.cross_entropy(lg.float(), targets)
                       for w, lg in zip(self.loss_weights, logits, strict=True))
        stats = {f"gen_correct_exit{layer}": (lg.detach().argmax(-1) == targets).sum()
                 for layer, lg in zip(self.exits, logits, strict=True)}
        stats.update(gen_correct=stats[f"gen_correct_exit{self.exits[-1]}"],
                     gen_count=torch.tensor(float(len(targets))))
        if not isinstance(exit_index, torch.Tensor):
            stats["exit_layer_sum"] = torch.tensor(float(self.exits[exit_index]))
            return mlm_loss, logits[exit_index], stats
        stats["exit_layer_sum"] = self.exit_layer_ids.index_select(0, exit_index.view(1))[0]
        with torch.no_grad():
            chosen = logits[0].detach()  # (N, V)
            for k, lg in enumerate(logits[1:], start=1):
                chosen = torch.where(exit_index == k, lg.detach(), chosen)
        return mlm_loss, chosen, stats

    @torch.no_grad()
    def update_exit_probs(self, alpha: float) -> None:
        """The P update of the module docstring, from exit_counts (then reset)."""
        acc = self.exit_counts[0] / self.exit_counts[1].clamp(min=1.0)
        if not torch.isnan(self.exit_acc_prev):
            r = torch.arange(len(self.exits), dtype=torch.float64, device=acc.device)
            delta = (acc - self.exit_acc_prev).clamp(-1.0, 1.0)
            self.exit_probs.copy_(torch.softmax(self.exit_probs + alpha * delta * r, dim=0))
        self.exit_acc_prev.copy_(acc)
        self.exit_counts.zero_()


class EarlyExitTask(JointTask):
    model_kind = "early-exit"

    def build_model(self, cfg: RunConfig) -> EarlyExitModel:
        return EarlyExitModel(cfg)

    def micro_batch(self, step, micro, d):
        return {**super().micro_batch(step, micro, d), "step": torch.tensor(step),
                "exit_u": torch.tensor(self.exit_uniform(step), dtype=torch.float64)}

    def exit_uniform(self, step: int) -> float:
        """The uniform that picks step ``step``'s exit, keyed by (seed, step)."""
        return np.random.default_rng([self.cfg.train.seed, step, 0xE417]).random()

    def exit_index(self, b) -> int:
        """The exit of this step: inverse CDF of P at a uniform keyed by (seed, step). On the
        host (it reads the step and P back); the training step uses ``exit_choice``."""
        u = self.exit_uniform(int(b["step"]))
        cdf = np.cumsum(self.model.exit_probs.cpu().numpy())
        return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)

    def exit_choice(self, b) -> torch.Tensor:
        """``exit_index`` on the device, 0-d long: P lives there and changes between steps
        (``after_step``), so the host would have to read it back each step; the uniform comes
        with the batch (``exit_u``, computed on the host ahead of the step)."""
        cdf = torch.cumsum(self.model.exit_probs, 0)  # (K,) float64
        u = b["exit_u"].to(cdf.dtype)
        return (cdf <= u).sum().clamp(max=len(self.model.exits) - 1)  # searchsorted, right

    def after_step(self, done: int, step_sums: dict[str, torch.Tensor], d: Dist) -> None:
        """Count this step's RTD accuracy on all ranks; update P every exit_update_every.
        The accuracy is over every real token (``rtd_all_*``), as it was before the logged
        metrics moved to ordinary tokens: the training signal does not change."""
        right = step_sums["rtd_all_tp"] + step_sums["rtd_all_tn"]
        total = right + step_sums["rtd_all_fp"] + step_sums["rtd_all_fn"]
        counts = distributed.all_reduce_sum(
            torch.stack([torch.as_tensor(right), torch.as_tensor(total)]).double().cpu(), d)
        self.model.exit_counts += counts.to(self.model.exit_counts.device)
        if done % self.cfg.joint.exit_update_every == 0:
            self.model.update_exit_probs(self.cfg.joint.exit_alpha)

    def train_metrics(self, sums):
        n = max(sums["gen_count"], 1.0)
        m = self.model
        return {**super().train_metrics(sums),
                **{f"gen_mlm_accuracy_exit{layer}": sums[f"gen_correct_exit{layer}"] / n
                   for layer in m.exits},
                **{f"exit_p{layer}": p for layer, p in zip(m.exits, m.exit_probs.tolist(),
                                                          strict=True)},
                "exit_layer": sums["exit_layer_sum"] / max(sums["micro_batches"], 1.0)}
