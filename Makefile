# Newcomer entry points: `make demo` (toy DLSM pipeline on CPU), `make test`, and `make digits` (the CIFAR
# comparison redone on 8x8 handwritten digits, CPU, about half an hour).
PYTHON := .venv/bin/python
# The stamp lives inside .venv, so deleting .venv also forgets the install.
STAMP := .venv/.requirements.stamp

.PHONY: venv test demo digits bench

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv .venv
	.venv/bin/pip install -r requirements.txt
	cp requirements.txt $(STAMP)

test: $(STAMP)
	$(PYTHON) -m pytest tests -q

demo: $(STAMP)
	$(PYTHON) run_lib_toy.py --config configs/toy/demo.py --workdir toy_demo

digits: $(STAMP)
	$(PYTHON) run_lib_digits.py --workdir digits_run

bench: $(STAMP)
	@set -e; for script in benchmarks/*.py; do \
		echo "== $$script"; $(PYTHON) $$script; \
	done
