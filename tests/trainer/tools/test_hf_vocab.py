"""A public masked LM with its own tokenizer as the frozen aux, through the whole flow: HF
folders built here (a WordPiece BERT, a byte-level BPE RoBERTa with <mask> last, a WordPiece
ELECTRA generator; tokenizers trained by ``tokenizers`` on real text, special tokens away from
ids 0-4) -> fast-electra hf import -> pipeline.prepare with tokenizer.kind = "hf" ->
pipeline.generate -> 20 rtd steps -> fast-electra hf export -> transformers' Auto classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import IN_MEMORY, corpus_lines, gen_argv, prepare_argv, run_train, train_argv
from tests.helpers import TINY as TINY_PATH
from trainer.data.corpus_shards import CorpusShards
from trainer.pretrained import load_discriminator, load_generator, resolve_checkpoint
from trainer.tokenizer import HFTokenizer
from trainer.tools.hf import local_mlm
from trainer.tools.hf.cli import main

transformers = pytest.importorskip("transformers")
from tokenizers import (  # noqa: E402 (after the skip)
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

# slow: the flow fixture builds, imports and exports a model per family, seconds each.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

H, MAX_LEN = 32, 64
WORDPIECE_SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]",
                      "[MASK]"]  # BERT's layout in small: [UNK] [CLS] [SEP] [MASK] after unused


def wordpiece(texts: list[str], specials: list[str] = WORDPIECE_SPECIALS):
    return local_mlm.wordpiece(texts, 700, transformers, specials)


def byte_bpe(texts: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<mask>"])  # the last id, as RoBERTa's
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
        sep_token="</s>", mask_token="<mask>")


def hf_mlm(kind: str, tok):
    t = transformers
    V = len(tok)
    common = dict(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, pad_token_id=tok.pad_token_id, layer_norm_eps=1e-5)
    cls, config = {
        "bert": (t.BertForMaskedLM, t.BertConfig(max_position_embeddings=MAX_LEN, **common)),
        "roberta": (t.RobertaForMaskedLM, t.RobertaConfig(
            max_position_embeddings=MAX_LEN + tok.pad_token_id + 1, type_vocab_size=1,
            **common)),
        "electra": (t.ElectraForMaskedLM, t.ElectraConfig(
            max_position_embeddings=MAX_LEN, embedding_size=H, **common)),
    }[kind]
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=["bert", "roberta", "electra"])
def flow(request, corpus_inputs, prose, tmp_path_factory):
    """The whole flow for one model family; returns its folders and objects."""
    kind = request.param
    tmp = tmp_path_factory.mktemp(kind)
    tok = (byte_bpe if kind == "roberta" else wordpiece)(prose)
    model = hf_mlm(kind, tok)
    model.save_pretrained(tmp / "hf")
    tok.save_pretrained(tmp / "hf")
    V = len(tok)
    assert main(["import", str(tmp / "hf"), str(tmp / "aux")]) == 0
    from pipeline.generate import run as generate
    from pipeline.prepare import run as prepare

    inputs_dir, _ = corpus_inputs
    hf_vocab = ["--set", "tokenizer.kind=hf", "--set", f"tokenizer.model={tmp / 'aux'}"]
    prepare(prepare_argv(inputs_dir, tmp / "corpus", *hf_vocab, *IN_MEMORY, vocab=V))
    aux = str(tmp / "aux" / "checkpoints" / "step_00000000")
    generate(gen_argv(tmp / "corpus", tmp / "rtd", f"generate.aux_checkpoint={aux}",
                      "generate.epochs=1", f"tokenizer.vocab_size={V}"))
    done = run_train(train_argv(tmp / "corpus", tmp / "rtd_run", "train.mode=rtd",
                                f"train.rtd_dir={tmp / 'rtd'}", "train.max_steps=20",
                                "train.global_batch_size=32",
                                "train.micro_batch_size_per_rank=32",
                                f"tokenizer.vocab_size={V}", "tokenizer.kind=hf",
                                f"tokenizer.model={tmp / 'aux'}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["export", str(tmp / "rtd_run"), str(tmp / "out")]) == 0
    return {"kind": kind, "tmp": tmp, "tok": tok, "model": model, "aux": aux}


def held_out(flow, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, T) project ids of corpus sequences, right-padded, and the (n, T) mask."""
    rows = list(CorpusShards(str(flow["tmp"] / "corpus")).rows())[-n:]
    T = max(len(r.input_ids) for r in rows)
    ids = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids.tolist())
        mask[i, :len(r.input_ids)] = True
    return ids, mask


def test_import_renumbers_to_the_same_logits(flow):
    """The imported aux on project ids computes the HF model's logits on source ids."""
    corpus = CorpusShards(str(flow["tmp"] / "corpus"))
    vocab = corpus.tokenizer()
    assert vocab.source_ids != {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    ids, mask = held_out(flow)
    src = torch.as_tensor(vocab.to_source)[ids]  # (n, T) in the tokenizer's own ids
    with torch.no_grad():
        want = flow["model"](input_ids=src, attention_mask=mask.long()).logits[mask]  # (N, V)
        got = load_generator(flow["aux"])(ids, mask, positions_mask=mask)  # (N, V) project
    torch.testing.assert_close(got[:, torch.as_tensor(vocab.to_project)], want,
                               atol=1e-4, rtol=1e-4)


def test_prepare_ids_are_the_tokenizer_ids(flow, prose):
    """pipeline.prepare's ids, mapped back, are the HF tokenizer's on 2,000 lines (non-ASCII
    included), and its corpus rows are [CLS] ... [SEP] in project ids."""
    vocab = CorpusShards(str(flow["tmp"] / "corpus")).tokenizer()
    tok = flow["tok"]
    lines = corpus_lines(prose, 1990) + [
        "naïve café 東京 😀", "[MASK] <mask> literal", "  two  spaces ", "ﬁnance ①", "Ünïcödé",
        "x" * 200, "12345", "\ttab", "end.", ""]
    assert len(lines) == 2000
    for line in lines:
        ours = vocab.encode(line)
        # split_special_tokens: special-token text in a document stays text in the corpus
        assert vocab.to_source[ours].tolist() == tok(line, add_special_tokens=False,
                                                     split_special_tokens=True)["input_ids"]
        assert not set(ours) & {0, 1, 2, 3, 4} or tok.unk_token_id in vocab.to_source[ours]
    row = next(CorpusShards(str(flow["tmp"] / "corpus")).rows())
    assert row.input_ids[0] == 2 and row.input_ids[-1] == 3


def test_export_speaks_the_tokenizers_ids(flow):
    """The exported discriminator, fed AutoTokenizer's ids, equals ours fed prepare's ids
    (1e-5, 64 held-out sequences); the exported tokenizer is the source one."""
    out = flow["tmp"] / "out"
    vocab = CorpusShards(str(flow["tmp"] / "corpus")).tokenizer()
    auto_tok = transformers.AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    text = "The quick brown fox, naïve café."
    assert auto_tok(text)["input_ids"] == flow["tok"](text)["input_ids"]
    hf = transformers.AutoModelForPreTraining.from_pretrained(str(out),
                                                              trust_remote_code=True).eval()
    ours = load_discriminator(resolve_checkpoint(str(flow["tmp"] / "rtd_run")))
    ids, mask = held_out(flow)
    src = torch.as_tensor(vocab.to_source)[ids]
    with torch.no_grad():
        want = ours(ids, mask)[mask]
        got = hf(input_ids=src, attention_mask=mask.long()).logits[mask]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["pad_token_id"] == flow["tok"].pad_token_id


def test_a_corpus_of_another_vocabulary_is_refused(flow, prepared, tmp_path, capsys):
    """Negative control: the imported aux with the project's SentencePiece corpus (same size
    forced) -> generate refuses, naming both tokenizers."""
    from pipeline.generate import main as generate_main

    corpus_dir, _, _ = prepared
    V = len(flow["tok"])
    rc = generate_main(gen_argv(corpus_dir, tmp_path / "rtd", f"generate.aux_checkpoint="
                                f"{flow['aux']}", "generate.epochs=1"))
    err = capsys.readouterr().err
    assert rc == 2 and str(corpus_dir) in err and "Traceback" not in err
    assert f"vocabulary of {V} tokens" in err and "has 600" in err


def test_same_size_other_vocabulary_is_refused(corpus_inputs, prose, tmp_path, capsys):
    """Negative control the sizes cannot catch: a BERT aux and a corpus tokenised by another
    WordPiece vocabulary of the same size (its special tokens in another order) -> generate
    refuses, naming both tokenizers."""
    from pipeline.generate import main as generate_main
    from pipeline.prepare import run as prepare

    tok = wordpiece(prose)
    hf_mlm("bert", tok).save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "aux")]) == 0
    other = wordpiece(prose, WORDPIECE_SPECIALS[::-1])
    other.save_pretrained(tmp_path / "other")
    assert len(other) == len(tok) and other.get_vocab() != tok.get_vocab()
    inputs_dir, _ = corpus_inputs
    prepare(prepare_argv(inputs_dir, tmp_path / "corpus", "--set", "tokenizer.kind=hf",
                         "--set", f"tokenizer.model={tmp_path / 'other'}", *IN_MEMORY,
                         vocab=len(tok)))
    aux = str(tmp_path / "aux" / "checkpoints" / "step_00000000")
    assert generate_main(gen_argv(tmp_path / "corpus", tmp_path / "rtd",
                                  f"generate.aux_checkpoint={aux}", "generate.epochs=1",
                                  f"tokenizer.vocab_size={len(tok)}")) == 2
    err = capsys.readouterr().err
    assert f"speaks the ids of hf tokenizer {tmp_path / 'aux'}" in err
    assert f"tokenised with hf tokenizer {tmp_path / 'other' / 'tokenizer.json'}" in err
    assert not (tmp_path / "rtd").exists()


def test_renumbering_is_a_permutation_with_specials_first(flow):
    vocab: HFTokenizer = CorpusShards(str(flow["tmp"] / "corpus")).tokenizer()
    V = vocab.get_piece_size()
    assert sorted(vocab.to_source.tolist()) == list(range(V))
    assert np.array_equal(vocab.to_project[vocab.to_source], np.arange(V))
    roles = ["pad", "unk", "cls", "sep", "mask"]
    assert [vocab.to_source[i] for i in range(5)] == [vocab.source_ids[r] for r in roles]
    rest = vocab.to_source[5:]
    assert np.all(np.diff(rest) > 0)  # every other token keeps its order


def test_local_mlm_builds_a_bert_the_import_renumbers(prepared, tmp_path):
    """fast-electra hf local-mlm (make demo-hf's stand-in for a public checkpoint): a BERT folder
    with BERT's special-token layout and the [aux] shape, which the import renumbers."""
    corpus_dir, _, _ = prepared
    config = tmp_path / "c.toml"
    config.write_text(f'extends = "{TINY_PATH}"\n[tokenizer]\nvocab_size = 500\n[data]\n'
                      "max_seq_len = 64\n[aux]\nnum_layers = 1\nhidden_size = 32\n"
                      "num_heads = 2\nffn_size = 64\n")
    assert main(["local-mlm", str(corpus_dir), str(tmp_path / "bert"), "--config",
                 str(config), "--steps", "30"]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "bert"))
    assert len(tok) == 500 and tok.pad_token_id == 0 and tok.unk_token_id == 9  # [unused*]
    model = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "bert"))
    assert model.config.hidden_size == 32 and model.config.layer_norm_eps == 1e-5
    assert main(["import", str(tmp_path / "bert"), str(tmp_path / "aux")]) == 0
    vocab = HFTokenizer.from_path(str(tmp_path / "aux"))
    assert vocab.source_ids == {"pad": 0, "unk": 9, "cls": 10, "sep": 11, "mask": 12}
    # Negative control: the folder exists now, a second build refuses to overwrite it.
    assert main(["local-mlm", str(corpus_dir), str(tmp_path / "bert"), "--config",
                 str(config), "--steps", "1"]) == 2
