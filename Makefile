# The two commands of the README. Each creates the virtual environment on first use (the CPU stack
# pinned in constraints-cpu.txt: torch 2.13.0+cpu, deepspeed 0.19.8, megatron-core 0.16.1) and reuses it.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

demo: $(VENV)/.installed
	$(BIN)/python -m lfr_ds.demo $(if $(DATA),--data $(DATA)) $(if $(OUT),--out $(OUT))

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check lfr_ds tools bench tests
	$(BIN)/ruff format --check lfr_ds tools bench tests

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) demo_out .pytest_cache
