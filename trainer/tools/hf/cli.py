"""Hugging Face interop (optional extra ``hf``): import an MLM as the auxiliary model, export
any trained model to transformers' Auto classes with a fast tokenizer.

    pip install -e '.[hf]'
    # a local BertForMaskedLM / RobertaForMaskedLM / ElectraForMaskedLM folder -> a checkpoint
    # that fast-electra generate (generate.aux_checkpoint) and trainer.pretrained.load_generator use
    fast-electra hf import hf/my-mlm runs/my-mlm [--config configs/base.toml]
    fast-electra generate --config configs/base.toml \\
        --set generate.aux_checkpoint=runs/my-mlm/checkpoints/step_00000000
    # a checkpoint (or run folder) -> a model folder (discriminator, the default for rtd /
    # joint runs, or generator, the default for mlm runs) + tokenizer.json
    fast-electra hf export runs/base/rtd hf/my-electra [--role discriminator|generator]

Both directions are exact: the converted model computes the same logits as the original (up to
float rounding; tests/trainer/tools/test_hf*.py check 1e-4 on import, 1e-5 on export). Export:
absolute-position post-LN models become plain HF ELECTRA; every other variant (relative
positions, pre-LN: all shipped configs) gets the project's remote-code model files
(exporter.py). Import: the special tokens must already sit at the project's ids ([PAD] [UNK]
[CLS] [SEP] [MASK] = 0-4) and the corpus must be tokenised with the imported model's own
vocabulary; nothing is renumbered (importer.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from trainer.cli import main_guard
from trainer.config.load import load_config
from trainer.tools.hf.common import require_transformers
from trainer.tools.hf.exporter import export_model
from trainer.tools.hf.importer import import_mlm
from trainer.tools.hf.local_mlm import LocalMLMOptions, build_local_mlm


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="fast-electra hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF *ForMaskedLM folder -> checkpoint (model_kind mlm)")
    imp.add_argument("hf_dir", help="local folder with config.json and the weights")
    imp.add_argument("out_dir", help="run folder to create; the checkpoint goes to "
                                     "OUT_DIR/checkpoints/step_00000000")
    imp.add_argument("--config", help="TOML run config for every section the HF model does "
                                      "not decide (data.corpus_dir, corruption, ...)")
    imp.add_argument("--trust-special-ids", action="store_true",
                     help="the folder has no tokenizer file; accept that [PAD] [UNK] [CLS] "
                          "[SEP] [MASK] are ids 0-4 without checking")
    exp = sub.add_parser("export", help="checkpoint -> HF model folder (AutoModel*) with "
                                        "tokenizer.json")
    exp.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest)")
    exp.add_argument("out_dir", help="folder to write (config.json, model.safetensors, ...)")
    exp.add_argument("--role", choices=["discriminator", "generator"],
                     help="default: generator for mlm checkpoints, else discriminator")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    loc = sub.add_parser("local-mlm", help="train a small BERT MLM + WordPiece tokenizer on a "
                                           "prepared corpus's text (a local stand-in for a "
                                           "public checkpoint)")
    loc.add_argument("corpus_dir", help="a corpus folder written by pipeline.prepare")
    loc.add_argument("out_dir", help="the HF folder to write (save_pretrained)")
    loc.add_argument("--config", required=True,
                     help="TOML run config: [aux] shape, tokenizer.vocab_size, data.max_seq_len")
    loc.add_argument("--steps", type=int, default=300, help="AdamW steps of 64 sequences")
    args = parser.parse_args(argv)
    require_transformers().utils.logging.disable_progress_bar()  # one summary line instead
    if args.command == "local-mlm":
        path = build_local_mlm(LocalMLMOptions(args.corpus_dir, args.out_dir, args.steps),
                               load_config(args.config))
        print(f"hf local-mlm: wrote {path}")
        return path
    if args.command == "import":
        path = import_mlm(args.hf_dir, args.out_dir, args.config, args.trust_special_ids)
        print(f"hf import: wrote {path}\n  use it as --set generate.aux_checkpoint={path}")
        return path
    path = export_model(args.checkpoint, args.out_dir, args.role, args.overwrite)
    remote = os.path.isfile(os.path.join(path, "modeling_fast_electra.py"))
    print(f"hf export: wrote {path} (load it with transformers' AutoTokenizer / AutoModel* "
          f".from_pretrained{'(..., trust_remote_code=True)' if remote else ''})")
    return path


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
