"""Length buckets (trainer.data.padding): the widths, the padded tensors, and that padding is
exact: the same batch padded to data.max_seq_len or trimmed to its longest sequence gives
the same loss and gradients in every mode that trains through it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import SMALL, TINY
from trainer.config.load import load_config
from trainer.data.padding import bucket_batch, bucket_width, num_buckets, pad_batch
from trainer.distributed import Dist
from trainer.modes.registry import build_task
from trainer.tokenizer import PAD_ID

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
MAX_LEN = 64  # SMALL's data.max_seq_len


def test_bucket_widths():
    assert [bucket_width(n, 64, 512) for n in (1, 64, 65, 500, 512)] == [64, 64, 128, 512, 512]
    assert bucket_width(100, 64, 100) == 100  # the cap need not be a multiple
    assert bucket_width(130, 64, 128) == 130  # never below the batch: no silent trimming
    assert bucket_width(37, 0, 512) == 37  # 0 = no buckets
    assert {bucket_width(n, 64, 500) for n in range(1, 501)} == {64, 128, 192, 256, 320, 384,
                                                                448, 500}
    assert num_buckets(64, 500) == 8 and num_buckets(64, 512) == 8 and num_buckets(0, 9) == 9
    with pytest.raises(ValueError, match="multiple"):
        bucket_width(3, -1, 8)


def test_pad_batch_pads_per_token_tensors_only():
    b = {"input_ids": torch.tensor([[2, 9, 3], [2, 3, 0]]),
         "original_ids": torch.tensor([[2, 8, 3], [2, 3, 0]]),
         "attention_mask": torch.tensor([[True, True, True], [True, True, False]]),
         "labels": torch.tensor([8]), "seq_ids": torch.tensor([4, 5]),
         "rtd_labels": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
         "step": torch.tensor(3)}
    p = pad_batch(b, 5)
    assert p["input_ids"].tolist() == [[2, 9, 3, PAD_ID, PAD_ID], [2, 3, 0, PAD_ID, PAD_ID]]
    assert p["original_ids"][:, 3:].eq(PAD_ID).all()
    assert p["attention_mask"].dtype == torch.bool and p["attention_mask"].sum() == 5
    assert p["rtd_labels"].shape == (2, 5) and p["rtd_labels"][:, 3:].eq(0).all()
    for k in ("labels", "seq_ids", "step"):
        assert p[k] is b[k]
    assert pad_batch(b, 3) is b
    assert bucket_batch(b, 4, 64)["input_ids"].shape == (2, 4)
    with pytest.raises(ValueError, match="below"):
        pad_batch(b, 2)


@pytest.fixture
def mode_sets(prepared, rtd_dir):
    corpus = f"data.corpus_dir={prepared[0]}"
    return {"rtd": ["train.mode=rtd", f"train.rtd_dir={rtd_dir}", corpus],
            "mlm": ["train.mode=mlm", corpus], "electra": ["train.mode=electra", corpus]}


def loss_and_grads(task, batch) -> tuple[float, dict[str, torch.Tensor]]:
    task.model.zero_grad(set_to_none=True)
    loss, _ = task.loss(task.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in task.model.named_parameters()
                         if p.grad is not None}


def short_batch(task) -> dict[str, torch.Tensor]:
    """The first micro-batch whose longest sequence is shorter than MAX_LEN (a batch already
    at MAX_LEN would compare a batch with itself)."""
    for step in range(50):
        b = task.micro_batch(step, 0, CPU)
        if b["attention_mask"].shape[1] < MAX_LEN:
            return b
    raise AssertionError("no micro-batch shorter than data.max_seq_len")


@pytest.mark.parametrize("mode", ["rtd", "mlm", "electra"])
def test_padding_to_max_seq_len_changes_nothing(mode, mode_sets, one_thread):
    cfg = load_config(TINY, [*SMALL, *mode_sets[mode], "model.dropout=0",
                             "model.attention_dropout=0", "train.micro_batch_size_per_rank=2",
                             "train.global_batch_size=2"])
    task = build_task(cfg, CPU)
    task.model.train()
    trimmed = short_batch(task)
    padded = pad_batch(trimmed, MAX_LEN)
    assert padded["input_ids"].shape[1] == MAX_LEN > trimmed["input_ids"].shape[1]
    loss_t, grads_t = loss_and_grads(task, trimmed)
    loss_p, grads_p = loss_and_grads(task, padded)
    assert loss_p == pytest.approx(loss_t, rel=1e-6, abs=1e-6)
    assert grads_t.keys() == grads_p.keys() and len(grads_t) > 4
    for name, g in grads_t.items():
        torch.testing.assert_close(grads_p[name], g, rtol=1e-5, atol=1e-6, msg=name)


def test_a_trim_that_drops_a_real_token_changes_the_loss(mode_sets, one_thread):
    """The negative control: the comparison above can see one real token go missing."""
    cfg = load_config(TINY, [*SMALL, *mode_sets["rtd"], "model.dropout=0",
                             "model.attention_dropout=0", "train.micro_batch_size_per_rank=2",
                             "train.global_batch_size=2"])
    task = build_task(cfg, CPU)
    batch = short_batch(task)
    width = batch["attention_mask"].shape[1]
    cut = {k: v[:, :width - 1] if v.dim() == 2 else v for k, v in batch.items()}
    assert cut["attention_mask"].sum() < batch["attention_mask"].sum()
    assert abs(loss_and_grads(task, cut)[0] - loss_and_grads(task, batch)[0]) > 1e-6
