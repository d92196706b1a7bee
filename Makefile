# Set-up, the quick demo on the embedded default (Fashion-MNIST), and the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install demo demo-stages demo-report demo-all small-sd colour-shapes test lint fashion-data bench

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's package when it is missing; otherwise say where to put the files.
fashion-data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || \
	    [ -f $(DATA_DIR)/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y dataset-fashion-mnist || \
	     (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	elif command -v apt-get >/dev/null 2>&1; then \
	    sudo apt-get install -y dataset-fashion-mnist; \
	else \
	    echo "Fashion-MNIST not found: put the four IDX .gz files in $(DATA_DIR)/datasets/fashion-mnist/" \
	         "(the stages also download them when the machine is online)"; \
	fi

# The demo: every stage on Fashion-MNIST in a preset that spends the time where it shows, as two
# chains on the two CPU cores (make -j2): the vae encoder -> Plan 1 (cgan) -> Plan 2 (wgan_gp and
# flow matching), and the evaluator CNN -> the self-consuming loop -> the small CLIP -> the drift
# figures -> the ae_basic encoder -> a flow on it -> a flow on vae; then evaluate.py and the
# report (demo_report.py). Translation (CycleGAN, DualGAN) is in `make demo-all`. Each stage's output goes to $(DEMO)/<stage>.log; `make demo` again
# redoes nothing that finished (delete $(DEMO) to run the stages again; they resume).
# `make demo-all` runs every model of every stage at the old quick preset.
DEMO := $(DATA_DIR)/.demo
DS := fashion-mnist
# A stage's command is a variable (make splits $(call ...) arguments at commas, and the commands
# hold comma lists); RUN runs the command named by its second argument.
RUN = @echo "[$(1)] started"; start=$$(date +%s); \
	( $($(2)) ) > $(DEMO)/$(1).log 2>&1 || { tail -n 25 $(DEMO)/$(1).log; echo "[$(1)] failed: $(DEMO)/$(1).log"; exit 1; }; \
	echo "[$(1)] done in $$(( $$(date +%s) - start )) s"; touch $(DEMO)/$(1)

EVALUATOR_CMD = $(PY) train_evaluator.py --dataset $(DS) --data-dir $(DATA_DIR)
ENCODER_VAE_CMD = $(PY) encoder_models.py --dataset $(DS) --models vae --epochs 3 --data-dir $(DATA_DIR)
ENCODER_AE_CMD = $(PY) encoder_models.py --dataset $(DS) --models ae_basic --epochs 2 --data-dir $(DATA_DIR)
PLAN1_CMD = $(PY) plan1_gan_training.py --dataset $(DS) --encoder vae --models cgan --epochs 3 \
	--lr-generator 1e-3 --lr-discriminator 1e-3 --ema-decay 0.99 --data-dir $(DATA_DIR)
PLAN2_CMD = $(PY) plan2_gan_training.py --dataset $(DS) --encoder vae \
	--models wgan_gp,flow_matching --limit 10000 --batch-size 64 --mode-seeking 0.5 \
	--epoch-vectors 0 --data-dir $(DATA_DIR)
FLOWS_VAE_CMD = $(PY) flows.py --dataset $(DS) --encoders vae --flows realnvp --epochs 4 \
	--data-dir $(DATA_DIR)
FLOWS_AE_CMD = $(PY) flows.py --dataset $(DS) --encoders ae_basic --flows realnvp --epochs 4 \
	--data-dir $(DATA_DIR)
LOOP_CMD = $(PY) self_consuming_loop.py --dataset $(DS) --generations 5 --epochs-first 15 --epochs 1 \
	--kid-subsets 20 --data-dir $(DATA_DIR)
CLIP_CMD = $(PY) train_small_clip.py --dataset $(DS) --limit 20000 --data-dir $(DATA_DIR)
DRIFT_CMD = $(PY) extract_generation_embeddings.py --model $(DATA_DIR)/checkpoints/clip_$(DS) \
	--annotation-file $(DATA_DIR)/$(DS)_loop/captions.json \
	--generation-dir-pattern '$(DATA_DIR)/$(DS)_loop/gen_{g}' --generations 0,2,5 \
	--num-captions 1000 --output-dir $(DATA_DIR)/embeddings && \
	$(PY) plot_generation_clusters.py --generations 0,2,5 --embedding-dir $(DATA_DIR)/embeddings \
	--visualization-dir $(DATA_DIR)/visualizations --results-dir $(DATA_DIR)/results \
	--reference-dir $(DATA_DIR)/$(DS)_loop_reference
EVALUATE_CMD = $(PY) evaluate.py --data-dir $(DATA_DIR) --threads 2 --plot-points 500

$(DEMO)/evaluator:
	@mkdir -p $(DEMO)
	$(call RUN,evaluator,EVALUATOR_CMD)

$(DEMO)/encoder-vae:
	@mkdir -p $(DEMO)
	$(call RUN,encoder-vae,ENCODER_VAE_CMD)

$(DEMO)/plan1: $(DEMO)/encoder-vae $(DEMO)/evaluator
	$(call RUN,plan1,PLAN1_CMD)

$(DEMO)/plan2: $(DEMO)/plan1
	$(call RUN,plan2,PLAN2_CMD)

$(DEMO)/flows-vae: $(DEMO)/flows-ae $(DEMO)/encoder-vae
	$(call RUN,flows-vae,FLOWS_VAE_CMD)

$(DEMO)/encoder-ae: $(DEMO)/drift
	$(call RUN,encoder-ae,ENCODER_AE_CMD)

$(DEMO)/flows-ae: $(DEMO)/encoder-ae
	$(call RUN,flows-ae,FLOWS_AE_CMD)

$(DEMO)/loop: $(DEMO)/evaluator
	$(call RUN,loop,LOOP_CMD)

$(DEMO)/clip: $(DEMO)/loop
	$(call RUN,clip,CLIP_CMD)

$(DEMO)/drift: $(DEMO)/clip
	$(call RUN,drift,DRIFT_CMD)

demo-stages: $(DEMO)/plan2 $(DEMO)/flows-vae

demo: install fashion-data
	@start=$$(date +%s); $(MAKE) --no-print-directory -j2 demo-stages DATA_DIR=$(DATA_DIR) && \
	$(MAKE) --no-print-directory demo-report DATA_DIR=$(DATA_DIR) && \
	echo "make demo: $$(( $$(date +%s) - start )) s of stages and evaluation"

demo-report:
	$(call RUN,evaluate,EVALUATE_CMD)
	@$(PY) demo_report.py --data-dir $(DATA_DIR)

# Every model of every stage (the previous demo): tens of minutes more.
demo-all: install fashion-data
	$(PY) encoder_models.py --dataset $(DS) --epochs 2 --limit 10000 --data-dir $(DATA_DIR)
	$(PY) flows.py --dataset $(DS) --encoders ae_basic,triplet --epochs 3 --data-dir $(DATA_DIR)
	$(PY) plan1_gan_training.py --dataset $(DS) --epochs 2 --limit 5000 --batch-size 32 --test-images 2000 --data-dir $(DATA_DIR)
	$(PY) plan2_gan_training.py --dataset $(DS) --epochs 20 --epoch-vectors 0 --samples 2000 --plot-points 300 --data-dir $(DATA_DIR)
	$(PY) evaluate.py --data-dir $(DATA_DIR)

# The miniature Stable Diffusion on Fashion-MNIST (the small CLIP's text tower conditions it;
# about 45 minutes on 2 CPU cores), then the seed's loop on it: 1,000 test images' class captions
# as prompts, 3 generations, whole-UNet fine-tuning. docs/drift.md has what it measured.
small-sd: install fashion-data
	$(PY) train_small_clip.py --dataset $(DS) --limit 20000 --threads 2 --data-dir $(DATA_DIR)
	$(PY) train_small_sd.py --dataset $(DS) --threads 2 --data-dir $(DATA_DIR)
	$(PY) self_consuming_loop.py --generator diffusion --prompts dataset --dataset $(DS) \
		--pipeline $(DATA_DIR)/checkpoints/sd_$(DS) --num-captions 1000 --generations 3 --threads 2 \
		--data-dir $(DATA_DIR)

# Your own images, shown on colour ones: a folder of 32x32 colour shapes (4 classes, 1,000
# training and 100 test images each, drawn by tests/colour_shapes.py) through every image stage,
# in its own data folder. docs/data.md has what it measured.
COLOUR_DIR ?= $(DATA_DIR)/colour
SHAPES := folder:$(COLOUR_DIR)/shapes
colour-shapes: install
	@[ -d $(COLOUR_DIR)/shapes ] || $(PY) tests/colour_shapes.py $(COLOUR_DIR)/shapes --per-class 1000
	$(PY) train_evaluator.py --dataset $(SHAPES) --data-dir $(COLOUR_DIR)
	$(PY) encoder_models.py --dataset $(SHAPES) --models vae,ntxent --epochs 10 --data-dir $(COLOUR_DIR)
	$(PY) plan1_gan_training.py --dataset $(SHAPES) --encoder vae --models cgan --epochs 10 \
		--data-dir $(COLOUR_DIR)
	$(PY) plan2_gan_training.py --dataset shapes --encoder vae --encoder-b ntxent \
		--models wgan_gp,flow_matching --epochs 30 --epoch-vectors 0 --data-dir $(COLOUR_DIR)
	$(PY) train_small_clip.py --dataset $(SHAPES) --epochs 4 --data-dir $(COLOUR_DIR)
	$(PY) self_consuming_loop.py --dataset $(SHAPES) --generations 2 --train-images 3000 \
		--epochs-first 10 --epochs 2 --n-images 400 --kid-subsets 20 --data-dir $(COLOUR_DIR)
	$(PY) evaluate.py --data-dir $(COLOUR_DIR)

# Two pytest workers (pytest-xdist), each test file on one worker (--dist loadfile), so a
# file's module fixtures, which train models, are built once, not once per worker.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: install
	$(VENV)/bin/ruff check .

# Benchmarks (not tests): tens of minutes on 2 CPU cores.
bench: install fashion-data
	$(PY) bench/bench_encoders.py
	$(PY) bench/bench_flows.py
	$(PY) bench/bench_evaluate.py --dataset fashion-mnist
	$(PY) bench/bench_plan1.py
	$(PY) bench/bench_plan2.py
	$(PY) bench/bench_plan2_sampling.py --data-dir data/bench_plan2/seed0 --encoder ae_advanced
	$(PY) bench/bench_plan2_target.py --encoders ae_basic,vae --train-sizes 10000,0
	$(PY) bench/bench_plan2_target.py --encoders ae_intermediate,ae_advanced --train-sizes 0 \
		--models wgan_gp,flow_matching
	$(PY) bench/bench_clip_extraction.py
	$(PY) bench/bench_drift_experiment.py
	$(PY) bench/bench_loop_study.py
	$(PY) bench/bench_sd_sampling.py
	$(PY) bench/bench_small_sd.py --prompts 1000
	$(PY) bench/bench_sd_loop_study.py
	$(PY) bench/bench_sd_sampling.py
