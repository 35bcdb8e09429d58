# copymachine — set-up, tests and one target per effect.
#   make setup                      copymachine + sd-scripts (submodule) + its own venv with torch
#   make test                       lint, then the fast suite (no GPU, no sd-scripts, no weights needed)
#   make test-integration           the suite against the real sd-scripts at vendor/sd-scripts
#   make test-release RELEASE=v0.9.1 the integration subset against an sd-scripts release in its own venv
#   make test-loaders               the final LoRAs in ComfyUI's loader, A1111's key mapping (and diffusers, if given)
#   make bench-effects              time the built-in image edits at 512² and 1024²
#   make outline BASE=model.safetensors [IMAGE=src.png] [OUT=runs/name] [ARGS="--max-steps 10"] [SD_PYTHON=py]
#   make setup SD_SCRIPTS=DIR       set up the sd-scripts you have (when git cannot fetch the submodule)

PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
SD_SCRIPTS ?= vendor/sd-scripts
SD_VENV    := $(SD_SCRIPTS)/venv
# The Python sd-scripts runs in, passed as --python only when given (SD_PYTHON=...); otherwise copymachine
# finds it as always: $SD_SCRIPTS_PYTHON, the venv in sd-scripts' folder, a kohya_ss venv beside it
SD_PYTHON  ?=
SD_PYTHON_ARG := $(if $(SD_PYTHON),--python "$(SD_PYTHON)")
# the integration targets name it for the tests: SD_PYTHON, else the venv in sd-scripts' folder
TEST_SD_PYTHON := $(abspath $(or $(SD_PYTHON),$(SD_VENV)/bin/python))
# The torch that fits your GPU, e.g. TORCH="torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
TORCH      ?= torch torchvision
EFFECTS    := outline flat contrast posterize jpeg

# An sd-scripts release for the version runs: extracted with `git archive` from a clone of
# sd-scripts that has the tags (SD_REPO), into its own folder with its own venv: torch + that
# release's requirements.txt (numpy<2 where its opencv is built for numpy 1). Never inside the repo.
RELEASE       ?= v0.10.1
SD_REPO       ?= $(SD_SCRIPTS)
SD_RELEASES   ?= $(HOME)/.cache/copymachine/sd-releases
RELEASE_DIR   := $(SD_RELEASES)/$(RELEASE)
RELEASE_TORCH ?= torch==2.14.1 torchvision==0.29.1
# the integration subset a release must pass: the copy model in memory = the file route (fp32), train, diff,
# the copy check, the preview, doctor
RELEASE_TESTS ?= test_both_routes_train_the_same_effect_lora_in_fp32 or test_custom_edit_end_to_end or test_difference_extraction_and_its_sign or test_copy_check_reports_no_copy_on_random_weights or test_standalone_preview or test_doctor_knows_the_engine

# The loaders (tests/integration/test_loaders_real.py): ComfyUI and A1111 extracted with `git archive` from
# clones (COMFYUI_REPO, A1111_REPO: a clone or a bare git dir) into their own folders, never inside the repo;
# or point at checkouts you have with COPYMACHINE_COMFYUI= / COPYMACHINE_A1111=. ComfyUI runs on the CPU in
# sd-scripts' Python (torch; COPYMACHINE_COMFYUI_PYTHON= for another); diffusers only with
# COPYMACHINE_DIFFUSERS_PYTHONS=py1:py2 (Pythons with diffusers + peft + torch). A loader not given is skipped.
LOADERS             ?= $(HOME)/.cache/copymachine
COMFYUI_REV         ?= a125cd84
A1111_REV           ?= v1.10.1
COPYMACHINE_COMFYUI ?= $(LOADERS)/comfyui-$(COMFYUI_REV)
COPYMACHINE_A1111   ?= $(LOADERS)/a1111-$(A1111_REV)

.PHONY: setup venv sd-scripts lint test test-integration test-integration-sdxl sd-release test-release loader-checkouts test-loaders bench bench-effects bench-recipes all $(EFFECTS) clean

$(BIN)/copymachine: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/copymachine

# sd-scripts: the pinned submodule (or the checkout at SD_SCRIPTS=), its own venv at $(SD_SCRIPTS)/venv,
# torch ($(TORCH)) and its requirements, then doctor: `copymachine setup` (on Windows: setup.ps1), with the
# venv made by $(PYTHON)
setup sd-scripts: venv
	$(BIN)/copymachine setup --sd-scripts $(SD_SCRIPTS) --torch "$(TORCH)" --base-python $(PYTHON)

# lint: ruff over our code and tests (rules in pyproject.toml), mypy, the command reference (docs/cli.md)
# against each command's --help (cog), and the docs site built with --strict (a broken link or page fails);
# part of `make test`, so CI runs it. After changing an option or a help text, regenerate the reference:
#   PYTHONPATH=. .venv/bin/cog -r docs/cli.md
DOCS_COG := docs/cli.md
lint: venv
	$(BIN)/ruff check copymachine tests
	$(BIN)/mypy
	PYTHONPATH=. $(BIN)/cog --check --check-fail-msg 'run: PYTHONPATH=. $(BIN)/cog -r $(DOCS_COG)' $(DOCS_COG)
	NO_MKDOCS_2_WARNING=1 PYTHONPATH=. $(BIN)/mkdocs build --strict --site-dir .site

# pytest exits 5 when it collects no test: that is not a failure of the suite.
# The slow fast-suite tests (marker slow, 10 s and more each) are left out here, kept in CI: .ci/run sets
# TEST_MARK="not integration" (or run `make test TEST_MARK="not integration"`).
TEST_MARK ?= not integration and not slow
test: venv lint
	$(BIN)/python -m pytest -q -m "$(TEST_MARK)" -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-integration: venv
	SD_SCRIPTS=$(abspath $(SD_SCRIPTS)) SD_SCRIPTS_PYTHON=$(TEST_SD_PYTHON) \
		$(BIN)/python -m pytest -v -m "integration and not sdxl" -p no:cacheprovider tests/integration; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# SDXL against the real sd-scripts (~30 min and 23 GB of RAM on a CPU machine; builds a 6.9 GB fixture)
test-integration-sdxl: venv
	SD_SCRIPTS=$(abspath $(SD_SCRIPTS)) SD_SCRIPTS_PYTHON=$(TEST_SD_PYTHON) \
		$(BIN)/python -m pytest -v -s -m sdxl -p no:cacheprovider tests/integration; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

sd-release:
	@test -f $(RELEASE_DIR)/train_network.py || { mkdir -p $(RELEASE_DIR) && git -C $(SD_REPO) archive $(RELEASE) -- . \
		':(exclude)bitsandbytes_windows' ':(exclude)configs/qwen3_06b/tokenizer.json' | tar -x -C $(RELEASE_DIR); }
	@test -x $(RELEASE_DIR)/venv/bin/python || $(PYTHON) -m venv $(RELEASE_DIR)/venv
	@cd $(RELEASE_DIR) && if grep -Eq '^opencv-python==4\.[0-9]\.' requirements.txt; then echo 'numpy<2' > venv/constraints.txt; else : > venv/constraints.txt; fi
	cd $(RELEASE_DIR) && venv/bin/python -m pip install -q $(RELEASE_TORCH) -r requirements.txt -c venv/constraints.txt

test-release: venv sd-release
	SD_SCRIPTS=$(RELEASE_DIR) SD_SCRIPTS_PYTHON=$(RELEASE_DIR)/venv/bin/python HF_HUB_OFFLINE=1 \
		$(BIN)/python -m pytest -v -s -m "integration and not sdxl" -p no:cacheprovider tests/integration -k "$(RELEASE_TESTS)"; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# (a mirror may lack ComfyUI's one large blob, a tokenizer no LoRA needs: it is left out)
loader-checkouts:
	@if [ -n "$(COMFYUI_REPO)" ] && [ ! -f $(COPYMACHINE_COMFYUI)/comfy/lora.py ]; then mkdir -p $(COPYMACHINE_COMFYUI) && \
		git -C $(COMFYUI_REPO) archive $(COMFYUI_REV) -- . ':(exclude)comfy/text_encoders/llama_tokenizer/tokenizer.json' | tar -x -C $(COPYMACHINE_COMFYUI) && \
		git -C $(COMFYUI_REPO) rev-parse '$(COMFYUI_REV)^{commit}' > $(COPYMACHINE_COMFYUI)/COMMIT; fi
	@if [ -n "$(A1111_REPO)" ] && [ ! -f $(COPYMACHINE_A1111)/extensions-builtin/Lora/networks.py ]; then mkdir -p $(COPYMACHINE_A1111) && \
		git -C $(A1111_REPO) archive $(A1111_REV) -- extensions-builtin/Lora | tar -x -C $(COPYMACHINE_A1111) && \
		git -C $(A1111_REPO) rev-parse '$(A1111_REV)^{commit}' > $(COPYMACHINE_A1111)/COMMIT; fi
	@test -f $(COPYMACHINE_COMFYUI)/comfy/lora.py || echo "no ComfyUI at $(COPYMACHINE_COMFYUI): its test skips (COMFYUI_REPO=clone, or COPYMACHINE_COMFYUI=checkout)"
	@test -f $(COPYMACHINE_A1111)/extensions-builtin/Lora/networks.py || echo "no A1111 at $(COPYMACHINE_A1111): its test skips (A1111_REPO=clone, or COPYMACHINE_A1111=checkout)"

test-loaders: venv loader-checkouts
	COPYMACHINE_COMFYUI=$(COPYMACHINE_COMFYUI) COPYMACHINE_A1111=$(COPYMACHINE_A1111) SD_SCRIPTS_PYTHON=$(TEST_SD_PYTHON) \
		$(BIN)/python -m pytest -v -s -p no:cacheprovider tests/integration/test_loaders_real.py; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Timing of the built-in image edits at 512² and 1024² (a table, not a test).
bench-effects: venv
	$(BIN)/python benchmarks/bench_effects.py

$(EFFECTS): venv
	@test -n "$(BASE)" || { echo "usage: make $@ BASE=model.safetensors [IMAGE=src.png] [OUT=runs/name] [ARGS=...]"; exit 2; }
	$(BIN)/copymachine train --effect $@ --base "$(BASE)" $(if $(IMAGE),--image "$(IMAGE)") $(if $(OUT),--out "$(OUT)") \
		--sd-scripts $(SD_SCRIPTS) $(SD_PYTHON_ARG) $(ARGS)

all: venv
	@test -n "$(BASE)" || { echo "usage: make all BASE=model.safetensors [IMAGE=src.png] [ARGS=...]"; exit 2; }
	$(BIN)/copymachine train --effect all --base "$(BASE)" $(if $(IMAGE),--image "$(IMAGE)") $(if $(OUT),--out "$(OUT)") \
		--sd-scripts $(SD_SCRIPTS) $(SD_PYTHON_ARG) $(ARGS)

# Benchmark (not a test): copymachine vs the same sd-scripts commands by hand -> docs/benchmarks.md
#   make bench BASE=model.safetensors [IMAGE=picture.png] [ARGS="--resolution 64 --max-steps 3 --tokenizer-cache-dir DIR --offline"]
#   ARGS may also take --items 1|2 (one item; the other keeps its figures), --repeats N (item 1 pairs, default 3),
#   --effects N (item 2, default 5), --copy-model memory|file (copymachine's route; the hand-run always follows the memo)
bench: venv
	@test -n "$(BASE)" || { echo "usage: make bench BASE=model.safetensors [IMAGE=...] [ARGS=...]"; exit 2; }
	$(BIN)/python benchmarks/bench_pipeline.py --base "$(BASE)" $(if $(IMAGE),--image "$(IMAGE)") \
		--sd-scripts $(SD_SCRIPTS) $(SD_PYTHON_ARG) $(ARGS)

# Benchmark (issue 34): the memo's and the fast recipe's trainings, N steps each at 64 px -> docs/benchmarks.md item 6
#   make bench-recipes BASE=model.safetensors [ARGS="--steps 20 --tokenizer-cache-dir DIR"]
bench-recipes: venv
	@test -n "$(BASE)" || { echo "usage: make bench-recipes BASE=model.safetensors [ARGS=...]"; exit 2; }
	$(BIN)/python benchmarks/bench_recipes.py --base "$(BASE)" --sd-scripts $(SD_SCRIPTS) $(SD_PYTHON_ARG) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .site
