# The two quick-start commands. Both work on a fresh machine: they create .venv and install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,hf,plot,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

# Whole flow on the embedded default corpus (docstrings of the Python standard library):
# prepare the corpus, pre-train a tiny auxiliary MLM on it with 2 DDP ranks (gloo), then dump
# 2 epochs of temperature-scheduled RTD shards with that frozen aux. One torch thread per
# process: the ranks and Beam workers already use every core.
demo: $(STAMP)
	$(PY) -m pipeline.prepare --config configs/tiny.toml --overwrite
	rm -rf runs/tiny/aux
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m trainer.train \
	    --config configs/tiny.toml --set train.mode=mlm --set train.out_dir=runs/tiny/aux
	OMP_NUM_THREADS=1 $(PY) -m pipeline.generate --config configs/tiny.toml --overwrite
	$(PY) -m pipeline.inspect shards/tiny/rtd

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf shards/*/ runs/ .pytest_cache
