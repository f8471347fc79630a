# The two commands README.md leads with:
#   make demo   install everything, then train -> export -> bench (and the comparison table) on the offline defaults
#   make test   install everything, then run the test suite
PY ?= python3
PIP ?= $(PY) -m pip
BACKBONE ?= minilm-l6
TASK ?= rotten-tomatoes
BUDGET ?= 3
MAXLEN ?= 64
RUNS ?= runs
MODELS ?= models

.PHONY: install demo test lint finetune train compare export bench clean

# torch first, pinned: on our machines this version is a CPU build already on disk (no multi-GB download)
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,export,serve,dev,triton,hub]"

demo: install bench
	@echo "accuracy table: $(RUNS)/compare/compare.md   speed table: $(RUNS)/bench.txt"

test: install
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .

$(RUNS)/ft/run.json:
	hadskip finetune --backbone $(BACKBONE) --task $(TASK) --max-len $(MAXLEN) --out $(RUNS)/ft

$(RUNS)/h$(BUDGET)/run.json: $(RUNS)/ft/run.json
	hadskip train --teacher $(RUNS)/ft --task $(TASK) --budget $(BUDGET) --max-len $(MAXLEN) --out $(RUNS)/h$(BUDGET) --resume

$(RUNS)/compare/compare.json: $(RUNS)/h$(BUDGET)/run.json
	hadskip compare --task $(TASK) --budgets $(BUDGET) --teacher $(RUNS)/ft --hadskip $(BUDGET)=$(RUNS)/h$(BUDGET) --out $(RUNS)/compare --max-len $(MAXLEN)

# the budget dial: one model, several operating points (stored in the run dir, copied into the manifest at export)
$(RUNS)/h$(BUDGET)/dial.json: $(RUNS)/h$(BUDGET)/run.json
	hadskip dial $(RUNS)/h$(BUDGET)

$(MODELS)/h$(BUDGET)/manifest.json: $(RUNS)/h$(BUDGET)/dial.json
	hadskip export $(RUNS)/h$(BUDGET) --engine onnx --with-baseline --out $(MODELS)/h$(BUDGET)

# int8 layer graphs for CPUs, gates fused into the graph before them; the export checks int8 vs fp32 on dev
$(MODELS)/h$(BUDGET)-int8/manifest.json: $(RUNS)/h$(BUDGET)/dial.json
	hadskip export $(RUNS)/h$(BUDGET) --engine onnx --with-baseline --quantize int8 --fuse-gates --out $(MODELS)/h$(BUDGET)-int8

finetune: $(RUNS)/ft/run.json
train: $(RUNS)/h$(BUDGET)/run.json
compare: $(RUNS)/compare/compare.json
export: $(MODELS)/h$(BUDGET)/manifest.json $(MODELS)/h$(BUDGET)-int8/manifest.json

bench: $(RUNS)/compare/compare.json $(MODELS)/h$(BUDGET)/manifest.json $(MODELS)/h$(BUDGET)-int8/manifest.json
	hadskip eval $(RUNS)/h$(BUDGET) --split test
	$(PY) bench/parity.py $(RUNS)/h$(BUDGET) $(MODELS)/h$(BUDGET) --split test
	cat $(RUNS)/compare/compare.md
	hadskip bench $(MODELS)/h$(BUDGET) $(MODELS)/h$(BUDGET)-int8 --batch 1,32 --seq 128 --k 3,6 --repeats 30 | tee $(RUNS)/bench.txt

clean:
	rm -rf $(RUNS) $(MODELS)
