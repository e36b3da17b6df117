"""fast-electra's PyTorch side: the model, the corruption math, the data readers, the training
modes and loop, and the user tools. A training node needs nothing else: trainer never imports
pipeline/ or apache_beam (pipeline/ imports trainer, so online and offline corruption are one
code path).

One sample, from text to gradient: pipeline/prepare.py tokenises it into a corpus shard, and
pipeline/generate.py corrupts it (corruption/, with a frozen aux from model/) into an RTD
shard; data/rtd_shards.py reads it back at its training position (data/order.py); modes/rtd.py
makes the batch a loss on model/heads.py's Discriminator; train.py steps the optimizer. The
online modes (modes/mlm.py, joint.py, fast_online.py, early_exit.py) read the corpus
(data/corpus_tokens.py) and call corruption/ themselves.

Rooms, one job each:

    errors.py       UserError: names the key, file or row and the fix; exit 2, no traceback
    atomic.py       the one atomic file write: temp file beside it, fsync, rename, cleanup
    digest.py       the one sha256: chunked over files and streams, and while writing
    config/         the run config: sections (dataclasses), TOML + --set loading, describe
    tokenizer.py    special token ids, SentencePiece loading and its contract
    model/          encoder, positions, heads, dropout plan, Admin init, parameter counts
    data/           shard manifests, corpus and RTD readers, token cache, order, prefetch
    corruption/     keyed rng, schedules, distributions, augmentations, sampling, corrupt_batch
    distributed.py  DDP setup (nccl / gloo), devices, rank helpers
    logger.py       metrics.jsonl, the progress line, TensorBoard
    checkpoint.py   atomic, self-describing checkpoints; the latest of a run
    cli.py          --config / --set / --help-config; main_guard (error: line, exit 2)
    optim.py        AdamW with weight-decay groups; warm-up then linear decay; named parts
    step.py         one optimizer step (micro-batches, clip, update), shared by every loop
    resume.py       where a run continues from; which config changes a resume refuses
    pretrained.py   a trained run's models from its checkpoint (aux, discriminator)
    modes/          Task protocol, registry (train.mode -> task), mlm, rtd, fast_online,
                    joint (electra, decoupled), early_exit
    train.py        the loop: one Task, DDP, evaluation, the log record, checkpoints
    tools/          evaluate, cost, plan, plot, sweep, finetune/, hf/ (Hugging Face import /
                    export; hf/remote/: the model files an export writes, torch + transformers
                    only); commands.py: the `fast-electra` command's dispatch table

At trainer/'s root there are only train.py and the shared modules named above: a tool lives in
tools/, and the notebook API of the shard readers is trainer.data (CorpusShards, RTDShards).

What each room may import (tests/trainer/test_layering.py checks every import against it):

    errors atomic digest    <- (nothing)
    config                  <- errors
    tokenizer               <- digest errors
    model                   <- config tokenizer
    data                    <- atomic config digest errors tokenizer
    corruption              <- config model tokenizer
    distributed logger checkpoint  <- errors
    cli                     <- config errors
    optim                   <- config model
    step                    <- optim
    resume                  <- checkpoint config errors
    pretrained              <- checkpoint config errors model
    modes                   <- config corruption data distributed errors model pretrained tokenizer
    train     <- checkpoint cli config data distributed errors logger modes optim resume step
    tools                   <- (any)
"""
