# The doors every newcomer and every check uses. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv test test-unit test-integration test-e2e lint crds crds-check cluster-up cluster-down \
        binaries demo bench bench-scaleup bench-deps bench-gateway clean image

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml operator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./operator -e '.[dev]'
	touch $@

## Everything CI runs: lint, types, CRD drift, unit, integration, e2e.
test: lint crds-check test-unit test-integration test-e2e

# actionlint (the GitHub workflows) is built from its Go module on first use, then cached.
lint: venv
	$(BIN)/ruff check operator devtools tests bench
	$(BIN)/mypy
	"$$(bash hack/actionlint/build.sh)" -no-color

# Pure logic, and the vLLM conformance suite against the simulator (no cluster).
test-unit: venv
	$(BIN)/pytest tests/unit tests/conformance

# The dev cluster is started once (or reused) by the session fixture and stopped by .ci/run.
test-integration: venv binaries
	$(BIN)/pytest tests/integration

# Includes tests/e2e/test_image.py: the image's entrypoint against the dev cluster.
test-e2e: venv binaries image
	$(BIN)/pytest tests/e2e

## The operator image (buildah, chroot isolation, on a local Debian base; no Docker, no registry),
## tagged localhost/modelplane/operator:<version>, and its SBOM in dist/. IMAGE=... to retag.
image: venv
	PYTHON=$(abspath $(BIN))/python bash hack/image/build.sh

## Regenerate crds/ and docs/api-reference.md from the pydantic models.
crds: venv
	$(BIN)/python -m modelplane.api.crdgen --write
	cp crds/*.yaml charts/modelplane/crds/
	cp charts/modelplane/crds/*.yaml charts/modelplane-crds/files/

## Fail when the committed CRD or API reference differs from a fresh generation.
crds-check: venv
	$(BIN)/python -m modelplane.api.crdgen --check

# The dev cluster's control plane, the Prometheus server of the Prometheus-source e2e test, and the
# LeaderWorkerSet controller of the multi-node e2e test.
binaries:
	bash hack/devcluster/build.sh >/dev/null
	bash hack/prometheus/build.sh >/dev/null
	bash hack/lws/build.sh >/dev/null

cluster-up: venv binaries
	$(BIN)/modelplane cluster up

cluster-down: venv
	$(BIN)/modelplane cluster down

demo: venv binaries
	$(BIN)/modelplane demo

bench: venv
	$(BIN)/python -m bench.autoscale --quick

# On the dev cluster (started if needed): from a queue forming to the next replica's pod.
bench-scaleup: venv binaries
	$(BIN)/python -m bench.scaleup

# HAProxy (Debian's package), the baseline of the gateway's overhead benchmark.
bench-deps:
	bash hack/haproxy/install.sh

# The gateway against direct and HAProxy: TTFT overhead, throughput per core, canary split (no cluster).
bench-gateway: venv bench-deps
	$(BIN)/python -m bench.gateway.overhead --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
