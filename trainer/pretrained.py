"""Trained models out of checkpoints, by role: the generator (an MLM) or the discriminator.

Every mode's checkpoint holds the models it trained; this module takes out the one a later
stage needs, whatever mode produced it:

    gen = load_generator("runs/tiny/aux/checkpoints/step_00000300")      # MLMModel, eval mode
    disc = load_discriminator("runs/tiny/rtd/checkpoints/step_00000200")  # Discriminator

=============  ======================================  ==========================================
model_kind     written by train.mode                   holds
=============  ======================================  ==========================================
mlm            mlm                                     a generator
discriminator  rtd, fast-online                        a discriminator
joint          electra, decoupled                      both ("from a previous training round")
early-exit     early-exit                              both; the generator up to its last exit
=============  ======================================  ==========================================

A joint checkpoint's discriminator comes out standalone: with ``joint.embedding_sharing =
shared`` it gets a copy of the shared table, with ``gdes`` the sum stop_grad(G) + delta that it
was trained with. ``read_bytes`` lets ``pipeline.generate`` read checkpoints from any Beam
filesystem; by default files are read locally.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable

import torch

from trainer.checkpoint import find_latest, load_state
from trainer.config.load import build_config
from trainer.config.run import RunConfig
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel

GENERATOR_KINDS = ("mlm", "joint", "early-exit")
DISCRIMINATOR_KINDS = ("discriminator", "joint", "early-exit")


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_meta(path: str, role: str, kinds: tuple[str, ...],
              read_bytes: Callable[[str], bytes] = _read_local) -> dict:
    """meta.json of checkpoint folder ``path``, checked to hold a model usable as ``role``."""
    meta_path = path.rstrip("/") + "/meta.json"
    try:
        meta = json.loads(read_bytes(meta_path))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        meta = None
    except (OSError, ValueError) as e:
        if "no such file" not in str(e).lower() and "not found" not in str(e).lower():
            raise UserError(f"{meta_path} is unreadable ({e})") from None
        meta = None
    if meta is None:
        raise UserError(f"{path!r} is not a checkpoint folder (no meta.json); give a "
                        f"runs/<run>/checkpoints/step_* folder holding a {role}")
    kind = meta.get("model_kind")
    if kind not in kinds:
        raise UserError(f"{path!r} holds a {kind!r} model (train.mode = {meta.get('mode')!r}), "
                        f"which has no {role}; give a checkpoint of a run with model kind "
                        f"{' / '.join(kinds)}")
    if "config" not in meta:
        raise UserError(f"{meta_path} has no 'config'; it was not written by trainer.train")
    return meta


def checkpoint_config(meta: dict) -> RunConfig:
    """The resolved run config a checkpoint was trained with."""
    return build_config(meta["config"], "checkpoint meta.json")


def generator_config(meta: dict) -> EncoderConfig:
    """The generator's EncoderConfig ([aux] sizes of the checkpoint's own config)."""
    return EncoderConfig.aux(checkpoint_config(meta))


def discriminator_config(meta: dict) -> EncoderConfig:
    return EncoderConfig.main(checkpoint_config(meta))


def _state(path: str, read_bytes: Callable[[str], bytes]) -> dict[str, torch.Tensor]:
    state_path = path.rstrip("/") + "/state.pt"
    try:
        raw = read_bytes(state_path)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{state_path} is missing or unreadable ({e}): an incomplete "
                        "checkpoint") from None
    return load_state(io.BytesIO(raw), state_path)["model"]


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def generator_state(meta: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLMModel state dict inside a checkpoint's model state."""
    if meta["model_kind"] == "mlm":
        return state
    gen = _sub(state, "generator.")
    if meta["model_kind"] == "early-exit":  # the encoder + the last exit's head: an MLMModel
        last = max(int(k.split(".")[1]) for k in gen if k.startswith("heads."))
        gen = {k: v for k, v in gen.items() if not k.startswith("heads.")} | {
            "head." + k: v for k, v in _sub(gen, f"heads.{last}.").items()}
    return gen


def discriminator_state(meta: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The standalone Discriminator state dict inside a checkpoint's model state."""
    if meta["model_kind"] == "discriminator":
        return state
    disc = _sub(state, "discriminator.")
    delta = disc.pop("encoder.word_emb.delta", None)
    if delta is not None:  # gdes: the table D was trained with is stop_grad(G's) + delta
        disc["encoder.word_emb.weight"] = state["generator.encoder.word_emb.weight"] + delta
    return disc


def load_generator(path: str, device: str | torch.device = "cpu",
                   read_bytes: Callable[[str], bytes] = _read_local) -> MLMModel:
    """The frozen generator (MLMModel) of checkpoint ``path``, on ``device``, in eval mode."""
    meta = read_meta(path, "generator", GENERATOR_KINDS, read_bytes)
    cfg = generator_config(meta)
    state = generator_state(meta, _state(path, read_bytes))
    with torch.random.fork_rng(devices=[]):  # loading must not move the caller's RNG
        model = MLMModel(cfg)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.to(device).eval()


def load_discriminator(path: str, device: str | torch.device = "cpu",
                       read_bytes: Callable[[str], bytes] = _read_local) -> Discriminator:
    """The discriminator of checkpoint ``path``, on ``device``, in eval mode."""
    meta = read_meta(path, "discriminator", DISCRIMINATOR_KINDS, read_bytes)
    with torch.random.fork_rng(devices=[]):
        model = Discriminator(discriminator_config(meta))
    model.load_state_dict(discriminator_state(meta, _state(path, read_bytes)))
    return model.to(device).eval()


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder, or a run folder meaning its latest checkpoint."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    latest = find_latest(path) if os.path.isdir(path) else None
    if latest is None:
        raise UserError(f"{path!r} is neither a checkpoint folder (checkpoints/step_*) nor a "
                        "run folder holding one")
    return latest
