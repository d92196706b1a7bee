# Set-up, the quick demo on the embedded default (Fashion-MNIST), and the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: install demo test lint fashion-data bench

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

# Every stage that exists, on Fashion-MNIST, in a quick preset; the offline drift experiment at
# the end (small CLIP, self-consuming loop, drift figures) took 12 minutes on 2 busy CPU cores.
demo: install fashion-data
	$(PY) encoder_models.py --dataset fashion-mnist --epochs 2 --limit 10000 --data-dir $(DATA_DIR)
	$(PY) flows.py --dataset fashion-mnist --encoders ae_basic,triplet --epochs 3 --data-dir $(DATA_DIR)
	$(PY) plan1_gan_training.py --dataset fashion-mnist --epochs 2 --limit 5000 --batch-size 32 --test-images 2000 --data-dir $(DATA_DIR)
	$(PY) plan2_gan_training.py --dataset fashion-mnist --epochs 20 --samples 2000 --plot-points 300 \
	    --data-dir $(DATA_DIR)
	$(PY) evaluate.py --data-dir $(DATA_DIR)
	$(PY) train_small_clip.py --dataset fashion-mnist --data-dir $(DATA_DIR)
	$(PY) self_consuming_loop.py --dataset fashion-mnist --generations 10 --data-dir $(DATA_DIR)
	$(PY) extract_generation_embeddings.py --model $(DATA_DIR)/checkpoints/clip_fashion-mnist \
	    --annotation-file $(DATA_DIR)/fashion-mnist_loop/captions.json \
	    --generation-dir-pattern '$(DATA_DIR)/fashion-mnist_loop/gen_{g}' --generations 0,4,10 \
	    --num-captions 1000 --output-dir $(DATA_DIR)/embeddings
	$(PY) plot_generation_clusters.py --generations 0,4,10 --embedding-dir $(DATA_DIR)/embeddings \
	    --visualization-dir $(DATA_DIR)/visualizations --results-dir $(DATA_DIR)/results

# Two pytest workers (pytest-xdist): 3 minutes instead of 5.5 on 2 idle CPU cores.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

lint: install
	$(VENV)/bin/ruff check .

# Benchmarks (not tests): tens of minutes on 2 CPU cores.
bench: install fashion-data
	$(PY) bench/bench_encoders.py
	$(PY) bench/bench_flows.py
	$(PY) bench/bench_evaluate.py --dataset fashion-mnist
	$(PY) bench/bench_plan1.py
	$(PY) bench/bench_plan2.py
	$(PY) bench/bench_plan2_sampling.py --data-dir data/bench_plan2 --encoder ae_advanced
	$(PY) bench/bench_clip_extraction.py
	$(PY) bench/bench_drift_experiment.py
