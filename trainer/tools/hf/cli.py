"""Hugging Face interop (optional extra ``hf``): import an MLM as the auxiliary model, export
a trained model as ELECTRA.

    pip install -e '.[hf]'
    # a local BertForMaskedLM / RobertaForMaskedLM / ElectraForMaskedLM folder -> a checkpoint
    # that pipeline.generate (generate.aux_checkpoint) and trainer.pretrained.load_generator use
    python -m trainer.hf import hf/my-mlm runs/my-mlm [--config configs/base.toml]
    python -m pipeline.generate --config configs/base.toml \\
        --set generate.aux_checkpoint=runs/my-mlm/checkpoints/step_00000000
    # a checkpoint (or run folder) -> ElectraForPreTraining (discriminator, the default for
    # rtd / joint runs) or ElectraForMaskedLM (generator, the default for mlm runs)
    python -m trainer.hf export runs/base/rtd hf/my-electra [--role discriminator|generator]

Both directions are exact: the converted model computes the same logits as the original (up to
float rounding; tests/trainer/tools/test_hf.py checks 1e-4), with two caveats. Import: this
project's LayerNorms use eps 1e-5 and BERT's use 1e-12; the import says when they differ and by
how much that moves the normalised embeddings (``importer.py``). Vocabulary: the special tokens
must already sit at the project's ids ([PAD] [UNK] [CLS] [SEP] [MASK] = 0-4) and the corpus
must be tokenised with the imported model's own vocabulary; nothing is renumbered.
Relative-position and pre-LN models have no HF ELECTRA equivalent and are refused on export.
"""

from __future__ import annotations

import argparse
import sys

from trainer.cli import main_guard
from trainer.tools.hf.common import require_transformers
from trainer.tools.hf.exporter import export_electra
from trainer.tools.hf.importer import import_mlm


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m trainer.hf", description=__doc__,
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
    exp = sub.add_parser("export", help="checkpoint -> HF ElectraForPreTraining / "
                                        "ElectraForMaskedLM folder")
    exp.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest)")
    exp.add_argument("out_dir", help="folder to write (config.json, model.safetensors, ...)")
    exp.add_argument("--role", choices=["discriminator", "generator"],
                     help="default: generator for mlm checkpoints, else discriminator")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    require_transformers().utils.logging.disable_progress_bar()  # one summary line instead
    if args.command == "import":
        path = import_mlm(args.hf_dir, args.out_dir, args.config, args.trust_special_ids)
        print(f"hf import: wrote {path}\n  use it as --set generate.aux_checkpoint={path}")
        return path
    path = export_electra(args.checkpoint, args.out_dir, args.role, args.overwrite)
    print(f"hf export: wrote {path} (load it with transformers' from_pretrained)")
    return path


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
