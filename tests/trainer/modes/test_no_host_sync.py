"""No host-device sync inside a training micro-step (forward + loss + backward) of any mode,
and the same numbers as the boolean-mask implementation (tests/trainer/modes/reference_boolean).

On a GPU a boolean gather, ``nonzero``, ``unique``, ``.item()``/``bool()``/``int()`` or a copy
of host data to the device blocks the CPU until the device catches up, so the backward cannot be
queued while the forward runs. On CPU nothing blocks, but the ops that would are visible:
``SyncCounter`` records them at the ATen level (a TorchDispatchMode, so every path into ATen is
seen: the modes, the models, autograd's backward), plus host data turned into a tensor on an
explicit device (a TorchFunctionMode: on a GPU that is a blocking copy).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import SMALL, TINY
from tests.trainer.modes.reference_boolean import boolean_reference
from trainer.config.load import load_config
from trainer.distributed import Dist
from trainer.modes.early_exit import EarlyExitTask
from trainer.modes.fast_online import FastOnlineTask
from trainer.modes.joint import JointTask
from trainer.modes.mlm import MLMTask
from trainer.modes.rtd import RTDTask

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Dist(0, 1, 0, torch.device("cpu"))
aten = torch.ops.aten

# Ops that read a device value back to the host (the count of a data-dependent shape, or a
# scalar), whatever their arguments.
_ALWAYS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
           aten.is_nonzero.default, aten.equal.default, aten.allclose.default,
           aten.repeat_interleave.Tensor, aten.nonzero_numpy.default}
_UNIQUE = ("unique", "_unique")
_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices if i is not None)


class SyncCounter(TorchDispatchMode):
    """Names of the ops that would sync on a GPU, in call order (``self.syncs``)."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket.__name__
        if func in _ALWAYS or packet.startswith(_UNIQUE):
            self.syncs.append(str(func))
        elif packet in ("index", "index_put", "index_put_", "_index_put_impl_") and \
                _bool_index(args[1]):
            self.syncs.append(f"{func} with a bool index")
        elif packet in ("_to_copy", "copy_"):
            src = args[1] if packet == "copy_" else args[0]
            dst = args[0].device if packet == "copy_" else kwargs.get("device", src.device)
            if torch.device(dst) != src.device:
                self.syncs.append(f"{func} {src.device} -> {dst}")
        return func(*args, **kwargs)


class HostToDevice(TorchFunctionMode):
    """Tensors made from host data (Python numbers, lists, numpy) on an explicit device."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and kwargs.get("device") is not None and args and \
                not isinstance(args[0], torch.Tensor):
            self.counter.syncs.append(f"torch.{func.__name__}(host data, device=...)")
        return func(*args, **kwargs)


def micro_step(task, model, batch, counter: SyncCounter | None = None):
    """One micro-step as trainer.train runs it: loss, backward of loss / accum, and the sums
    added into the interval (tensors stay on the device). Returns (loss, sums, grads)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in every call
    modes = [counter, HostToDevice(counter)] if counter is not None else []
    interval: dict = {}
    for m in modes:
        m.__enter__()
    try:
        loss, sums = task.loss(model, batch)
        (loss / 2).backward()
        sums["loss_sum"] = loss.detach().float()
        for k, v in sums.items():
            interval[k] = interval.get(k, 0.0) + v
    finally:
        for m in reversed(modes):
            m.__exit__(None, None, None)
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), interval, grads


def counted(task, model, batch) -> list[str]:
    counter = SyncCounter()
    micro_step(task, model, batch, counter)
    return counter.syncs


def assert_same(new, ref):
    (loss, sums, grads), (rloss, rsums, rgrads) = new, ref
    tol = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(loss, rloss, **tol)
    assert set(sums) == set(rsums)
    for k in sums:
        torch.testing.assert_close(torch.as_tensor(sums[k]).double(),
                                   torch.as_tensor(rsums[k]).double(), **tol, msg=k)
    assert set(grads) == set(rgrads)
    for k in grads:
        torch.testing.assert_close(grads[k], rgrads[k], **tol, msg=k)


def cfg_for(corpus_dir, *overrides: str):
    return load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}",
                              "train.global_batch_size=8", "train.micro_batch_size_per_rank=8",
                              *overrides])


JOINT = {
    "electra": ["train.mode=electra"],
    "electra-gdes": ["train.mode=electra", "joint.embedding_sharing=gdes"],
    "electra-none": ["train.mode=electra", "joint.embedding_sharing=none"],
    "decoupled": ["train.mode=decoupled"],
    "emb-gen": ["train.mode=electra", "joint.replacement=embedding_topk"],
    "early-exit": ["train.mode=early-exit", "aux.num_layers=4", "joint.exit_layers=[1, 2, 3, 4]"],
}


def corpus_task(corpus_dir, name: str):
    torch.manual_seed(0)
    if name == "mlm":
        return MLMTask(cfg_for(corpus_dir, "train.mode=mlm"), CPU)
    cls = EarlyExitTask if name == "early-exit" else JointTask
    return cls(cfg_for(corpus_dir, *JOINT[name]), CPU)


def straddling_step(task) -> int:
    """A step whose micro-batch holds rows of two epochs (the joint modes' per-row keys)."""
    gbs = task.cfg.train.global_batch_size
    step = task.samples_per_epoch // gbs
    assert task.samples_per_epoch % gbs, "the corpus size must not divide the batch"
    return step


@pytest.mark.parametrize("name", ["mlm", *JOINT])
def test_corpus_modes_match_the_boolean_reference_and_never_sync(prepared, name):
    task = corpus_task(prepared[0], name)
    steps = [0] if name == "mlm" else [0, straddling_step(task)]
    for step in steps:
        batch = task.micro_batch(step, 0, CPU)
        if step:
            assert len(batch["epochs"].unique()) == 2
        model = task.model
        new = micro_step(task, model, batch)
        with boolean_reference():
            ref = micro_step(task, model, batch)
        assert_same(new, ref)
        assert counted(task, model, batch) == [], (name, step)
        with boolean_reference():  # the negative control: the counter sees the old syncs
            assert len(counted(task, model, batch)) > 0


def test_early_exit_choice_on_the_device_is_the_host_draw(prepared):
    task = corpus_task(prepared[0], "early-exit")
    for probs in ([0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 0.0], [0.25] * 4):
        task.model.exit_probs.copy_(torch.tensor(probs, dtype=torch.float64))
        for step in range(300):
            b = {"step": torch.tensor(step),
                 "exit_u": torch.tensor(task.exit_uniform(step), dtype=torch.float64)}
            assert int(task.exit_choice(b)) == task.exit_index(b), (probs, step)


def test_early_exit_samples_from_the_chosen_exit(prepared):
    """The exit drawn on the device gives the very replacements the host draw gives."""
    task = corpus_task(prepared[0], "early-exit")
    batch = task.micro_batch(3, 0, CPU)
    with torch.no_grad():
        torch.manual_seed(1)
        _, _, on_device = task._run(task.model, batch, 0, task.exit_choice(batch))
        torch.manual_seed(1)
        _, _, on_host = task._run(task.model, batch, 0, task.exit_index(batch))
    for k in on_host:
        assert torch.equal(torch.as_tensor(on_device[k]).double(),
                           torch.as_tensor(on_host[k]).double()), k


def rtd_cfg(corpus_dir, rtd_dir, *overrides: str):
    return cfg_for(corpus_dir, "train.mode=rtd", f"train.rtd_dir={rtd_dir}",
                   "train.max_steps=20", *overrides)


def test_rtd_matches_the_boolean_reference_and_never_syncs(prepared, rtd_dir):
    torch.manual_seed(0)
    task = RTDTask(rtd_cfg(prepared[0], rtd_dir), CPU)
    for step in (0, 5):
        batch = task.micro_batch(step, 0, CPU)
        assert not batch["attention_mask"].all()  # padded: the masks matter
        new = micro_step(task, task.model, batch)
        with boolean_reference():
            ref = micro_step(task, task.model, batch)
        assert_same(new, ref)
        assert counted(task, task.model, batch) == []
        with boolean_reference():
            assert len(counted(task, task.model, batch)) > 0


def test_fast_online_syncs_only_in_its_corruption(prepared, aux_checkpoint, aux_rtd):
    """fast-online corrupts inside the step with the pipeline's ``corrupt_batch`` (host-planned
    schedule, per-epoch keys, data-dependent selection: the bytes pipeline.generate writes).
    Those syncs are its allowance; the discriminator's step after it has none."""
    rtd_dir, _ = aux_rtd
    cfg = rtd_cfg(prepared[0], rtd_dir, f"generate.aux_checkpoint={aux_checkpoint}",
                  "generate.epochs=2", "generate.seed=7")
    torch.manual_seed(0)
    task = FastOnlineTask(cfg, CPU)
    batch = task.micro_batch(1, 0, CPU)
    new = micro_step(task, task.model, batch)
    with boolean_reference():
        ref = micro_step(task, task.model, batch)
    assert_same(new, ref)
    counter = SyncCounter()
    with counter, torch.no_grad():
        ready = task.ready(batch)
    assert len(counter.syncs) > 0  # the documented allowance: corrupt_batch's
    d_step = copy.copy(task)
    d_step.ready = lambda b: b  # the rows as corrupted: what is left is the D step
    assert counted(d_step, task.model, ready) == []
