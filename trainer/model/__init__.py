"""The ELECTRA encoder and its heads (imports config/ and tokenizer.py only).

    encoder_config.py  EncoderConfig: the shape, from the run config (main model or aux)
    encoder.py         the Transformer encoder; post-LN with Admin init, or pre-LN
    positions.py       T5 relative position buckets and the bias prior
    dropout.py         DropoutPlan: per-call dropout that leaves a shared model alone
    heads.py           MLMHead + Encoder = MLMModel (aux); RTDHead + Encoder = Discriminator
    params.py          exact parameter counts (paper Table 2), weight-decay groups
"""
