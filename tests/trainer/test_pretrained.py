"""Models out of checkpoints by role: a joint checkpoint's generator and discriminator come out
standalone and compute exactly what they computed inside the joint model."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import SMALL, TINY, save_model
from trainer import checkpoint
from trainer.config.load import load_config, to_dict
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel
from trainer.modes.joint import JointModel
from trainer.pretrained import load_discriminator, load_generator, resolve_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sharing", ["shared", "gdes", "none"])
def test_joint_checkpoint_yields_both_models(tmp_path, sharing):
    cfg = load_config(TINY, [*SMALL, "train.mode=electra", "aux.num_layers=1",
                             f"joint.embedding_sharing={sharing}"])
    torch.manual_seed(0)
    joint = JointModel(cfg).eval()
    with torch.no_grad():  # make the gdes delta and the tables non-trivial
        for p in joint.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_model(tmp_path, joint, cfg, "joint")
    ids = torch.randint(5, 600, (2, 16))
    mask = torch.ones_like(ids)
    sel = torch.zeros_like(ids, dtype=torch.bool)
    sel[:, 3] = True

    gen = load_generator(path)
    disc = load_discriminator(resolve_checkpoint(str(tmp_path)))
    assert not any(p.requires_grad for p in gen.parameters())
    with torch.no_grad():
        torch.testing.assert_close(gen(ids, mask, positions_mask=sel),
                                   joint.generator(ids, mask, positions_mask=sel))
        torch.testing.assert_close(disc(ids, mask), joint.discriminator(ids, mask))


def test_wrong_kind_and_missing_checkpoint_are_named(tmp_path):
    cfg = load_config(TINY, [*SMALL])
    path = save_model(tmp_path, MLMModel(EncoderConfig.aux(cfg)), cfg, "mlm")
    with pytest.raises(UserError, match="has no discriminator"):
        load_discriminator(path)
    with pytest.raises(UserError, match="not a checkpoint folder"):
        load_generator(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="neither a checkpoint"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


class _RunsCode:
    """Unpickling this calls a function: what a malicious downloaded checkpoint would do."""

    def __reduce__(self):
        return (_mark_ran, ("unpickled",))


_RAN: list[str] = []


def _mark_ran(what: str) -> str:
    _RAN.append(what)
    return what


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    """state.pt loads with weights_only=True: a pickled callable is refused, named, and never
    called (with weights_only=False, the old loader, _mark_ran would run). Negative control:
    the same model's honest checkpoint loads."""
    cfg = load_config(TINY, [*SMALL])
    model = MLMModel(EncoderConfig.aux(cfg))
    honest = save_model(tmp_path / "honest", model, cfg, "mlm")
    load_generator(honest)
    meta = {"step": 1, "mode": "mlm", "config": to_dict(cfg), "model_kind": "mlm"}
    evil = checkpoint.save(str(tmp_path / "evil"), 1,
                           {"model": model.state_dict(), "extra": _RunsCode()}, meta,
                           checkpoint.SaveContext.single_process())
    _RAN.clear()
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_generator(evil)
    with pytest.raises(UserError, match="refusing to unpickle"):
        checkpoint.load(evil, 0)
    assert _RAN == []
    torch.load(f"{evil}/state.pt", weights_only=False)  # the control: it does run code
    assert _RAN == ["unpickled"]
