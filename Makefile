# The two quick-start commands. Both work on a fresh machine: they create .venv and install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The project's one command line (trainer/tools/commands.py); installed by $(STAMP).
FE := $(VENV)/bin/fast-electra
STAMP := $(VENV)/.installed

.PHONY: demo demo-hf test test-fast lint clean install task-sources gpu-wheels

# constraints.txt pins the releases the tests ran with; pyproject.toml itself gives ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,hf,plot,tensorboard,dask]'
	touch $(STAMP)

install: $(STAMP)

# wheels/: what the offline GPU image lacks for bench/gpu_check.sh (Beam, its requirements the
# image has not, zstandard, this project), cp312 manylinux wheels; needs network to PyPI.
# The lists: bench/gpu_image.toml. Copy wheels/ to the GPU machine along with the repo.
gpu-wheels: $(STAMP)
	$(PY) bench/gpu_wheels.py --out wheels

# Whole flow on the embedded default corpus (docstrings of the Python standard library):
# prepare the corpus; pre-train a tiny auxiliary MLM on it with 2 DDP ranks (gloo); dump 4
# epochs of temperature-scheduled RTD shards with that frozen aux; train the discriminator on
# the first 3 epochs with 2 ranks (no aux in the loop) and score it on the 4th, never seen;
# then evaluate, cost and plots. Every setting is in configs/tiny.toml (discriminator, data,
# generate) and configs/tiny_aux.toml (the aux run). One torch thread per process: the ranks
# and Beam workers already use every core.
TORCHRUN := OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m trainer.train
# An earlier run's folders: said, then deleted; with KEEP=1 (make demo KEEP=1) moved aside to
# FOLDER.YYYYmmdd-HHMMSS instead, so a rerun never silently destroys results.
clear_runs = for d in $(1); do [ -e "$$d" ] || continue; \
	if [ -n "$(filter-out 0,$(KEEP))" ]; then k="$$d.$$(date +%Y%m%d-%H%M%S)"; \
	    echo "make: KEEP=1: moving $$d to $$k"; mv "$$d" "$$k"; \
	else echo "make: removing $$d (make $@ KEEP=1 keeps it as $$d.<timestamp>)"; \
	    rm -rf "$$d"; fi; done
demo: $(STAMP)
	$(FE) prepare --config configs/tiny.toml --overwrite
	@$(call clear_runs,runs/tiny)
	$(TORCHRUN) --config configs/tiny_aux.toml
	OMP_NUM_THREADS=1 $(FE) generate --config configs/tiny.toml --overwrite
	$(FE) inspect shards/tiny/rtd --plot runs/tiny/plots/rtd_schedule.png
	$(TORCHRUN) --config configs/tiny.toml
	OMP_NUM_THREADS=2 $(FE) evaluate --config configs/tiny.toml --checkpoint runs/tiny/aux \
	    --checkpoint runs/tiny/rtd --epochs 3 --json runs/tiny/eval.json
	$(FE) cost --config configs/tiny.toml --run runs/tiny/rtd
	$(FE) plot runs/tiny/rtd runs/tiny/aux --out runs/tiny/plots
	@echo "demo: corpus shards/tiny/corpus, RTD shards shards/tiny/rtd, aux runs/tiny/aux," \
	    "discriminator runs/tiny/rtd, held-out metrics runs/tiny/eval.json, plots runs/tiny/plots/"

# The demo with a Hugging Face BERT MLM and its own WordPiece tokenizer as the frozen aux
# (configs/tiny_bert.toml): fast-electra hf local-mlm trains that BERT on the demo corpus's text
# (the stand-in for a public checkpoint; no download), hf import renumbers its vocabulary
# into an aux checkpoint, and prepare, generate, the discriminator and the export use the
# BERT tokenizer's vocabulary; hf/tiny-bert-rtd is the discriminator for AutoModel*.
demo-hf: $(STAMP)
	test -f shards/tiny/corpus/manifest.json || $(FE) prepare --config configs/tiny.toml
	@$(call clear_runs,hf/tiny-bert runs/tiny-bert)
	OMP_NUM_THREADS=2 $(FE) hf local-mlm shards/tiny/corpus hf/tiny-bert \
	    --config configs/tiny_bert.toml
	$(FE) hf import hf/tiny-bert runs/tiny-bert/aux --config configs/tiny_bert.toml
	$(FE) prepare --config configs/tiny_bert.toml --overwrite
	OMP_NUM_THREADS=1 $(FE) generate --config configs/tiny_bert.toml --overwrite
	$(TORCHRUN) --config configs/tiny_bert.toml
	OMP_NUM_THREADS=2 $(FE) evaluate --config configs/tiny_bert.toml \
	    --checkpoint runs/tiny-bert/rtd --epochs 3 --json runs/tiny-bert/eval.json
	$(FE) hf export runs/tiny-bert/rtd hf/tiny-bert-rtd --overwrite
	@echo "demo-hf: BERT aux hf/tiny-bert (imported: runs/tiny-bert/aux), corpus and RTD shards" \
	    "shards/tiny-bert/, discriminator runs/tiny-bert/rtd, exported hf/tiny-bert-rtd"

# The real fine-tuning tasks (fast-electra finetune-data --task wordnet|fortunes) and the English
# pre-training corpus (fast-electra corpus-data) are built from three Debian packages; installed
# here where apt-get runs as root, else their tests skip.
task-sources:
	@if [ -e /usr/share/wordnet/data.noun ] && [ -e /usr/share/games/fortunes/computers ] \
	    && [ -e /usr/share/dictd/gcide.dict.dz ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends wordnet-base fortunes dict-gcide >/dev/null; \
	else echo "make: the real fine-tuning tasks and the English corpus need Debian's" \
	    "wordnet-base, fortunes and dict-gcide (sudo apt-get install wordnet-base fortunes" \
	    "dict-gcide); their tests skip without them"; fi

test: $(STAMP) task-sources
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15

# The quick lane while editing (about a minute and a half on 2 cores): every test but those
# marked slow (torchrun ranks, Dask clusters, kill -9, the benches, multi-process Beam runs,
# anything that takes seconds) and the CUDA ones. `make test` runs them all, as CI does.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=5

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf shards/*/ runs/ hf/ .pytest_cache
