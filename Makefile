# Newcomer entry points: `make demo` (toy DLSM pipeline on CPU), `make test`, and `make digits` (the CIFAR
# comparison redone on 8x8 handwritten digits, CPU), on whichever python3 is installed.
PYTHON3 ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PYTHON_VERSION := $(shell $(PYTHON3) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# Stamps live inside .venv, so deleting .venv also forgets the installs; their names carry the Python version.
CORE_STAMP := $(VENV)/.core-$(PYTHON_VERSION).stamp
EVAL_STAMP := $(VENV)/.eval-$(PYTHON_VERSION).stamp

.PHONY: venv venv-eval test demo digits bench

venv: $(CORE_STAMP)

venv-eval: $(EVAL_STAMP)

# The core: training, sampling, the toy, digits (no TensorFlow).
$(CORE_STAMP): requirements.txt
	test -x $(PYTHON) || $(PYTHON3) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(v != "$(PYTHON_VERSION)" and \
		f"make: $(VENV) holds Python {v} but $(PYTHON3) is Python $(PYTHON_VERSION): remove $(VENV) to rebuild it")'
	$(PYTHON) -m pip install -r requirements.txt
	touch $@

# The evaluation extra: TensorFlow for the Inception features (and tensorflow-gan on Python 3.11).
$(EVAL_STAMP): requirements-eval.txt $(CORE_STAMP)
	$(PYTHON) -m pip install -r requirements-eval.txt
	touch $@

test: $(EVAL_STAMP)
	$(PYTHON) -m pytest tests -q -rs

demo: $(CORE_STAMP)
	$(PYTHON) run_lib_toy.py --config configs/toy/demo.py --workdir toy_demo

digits: $(CORE_STAMP)
	$(PYTHON) run_lib_digits.py --workdir digits_run

bench: $(CORE_STAMP)
	@set -e; for script in benchmarks/*.py; do \
		echo "== $$script"; $(PYTHON) $$script; \
	done
