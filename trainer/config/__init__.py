"""The run config (imports errors.py only).

    sections.py        [data] [tokenizer] [model] [aux] [corruption] [generate]
    run.py             [mlm] [joint] [train] and RunConfig, the whole run
    load.py            TOML + --set loading, type checks, to_toml, describe (--help-config)
"""
