# Two commands for a fresh clone (Python >= 3.10): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_OUT ?= demo_output

.PHONY: demo test venv clean eval

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,judge,export]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m meer.cli.demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the evaluation in README / docs/evaluation.md (needs ../shared/data; slow on CPU the first time)
eval: $(VENV)/.installed
	$(PY) benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
