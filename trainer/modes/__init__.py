"""Training modes as tasks for the one loop in trainer/train.py (imports config/, corruption/,
data/, distributed.py, errors.py, model/, pretrained.py, tokenizer.py).

    base.py            the Task protocol; CorpusTask, the base of the corpus-reading modes
    registry.py        train.mode -> task (the only module that imports every mode)
    rtd.py             rtd: the discriminator on the offline RTD shards (the main mode)
    mlm.py             mlm: pre-train the auxiliary MLM
    fast_online.py     fast-online: the frozen aux corrupts in the loop
    joint.py           electra / decoupled: generator and discriminator trained together
    early_exit.py      early-exit: the generator is the discriminator's lower layers
"""
