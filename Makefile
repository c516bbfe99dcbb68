# ferry — top-level tasks. Run as root on Debian 12.
#
#   make demo    install what is needed (setup), build, and run the demo container
#   make test    setup + build + lint, then unit and end-to-end tests (nextest)
#   make lint    rustfmt --check and clippy -D warnings
#   make bench   benchmarks: lifecycle latency vs runc, engine dump/restore GiB/s
#   make fuzz    bounded fuzzing of the image reader
#   make clean

SHELL := /bin/bash
CARGO ?= cargo
NEXTEST_CONFIG := integration/nextest.toml

# Everything the demo and the tests use: busybox-static (rootfs), runc (reference runtime),
# podman + conmon and containerd (real callers), criu (its `crit` decodes images), protoc,
# libseccomp (libcontainer), gcc (static test workloads), and tools the later issues use.
APT_PACKAGES := busybox-static criu runc podman conmon containerd protobuf-compiler \
	libprotobuf-dev nftables iproute2 strace libseccomp-dev pkg-config gcc libc6-dev make tar \
	uidmap fuse-overlayfs slirp4netns catatonit

.PHONY: all setup build demo test lint bench fuzz clean

all: build

setup:
	@if [ "$$(id -u)" != 0 ]; then echo "setup: run as root" >&2; exit 1; fi
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "setup: installing$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	else echo "setup: all packages present"; fi
	@command -v $(CARGO) >/dev/null || { echo "setup: cargo (Rust >= 1.85) is required" >&2; exit 1; }

build:
	$(CARGO) build --workspace --bins

demo: setup build
	integration/demo.sh

# Unit tests and end-to-end tests of every crate; nextest prints its Summary line. Without
# cargo-nextest, fall back to cargo test (test binaries run one after another, which keeps the
# podman and containerd tests serialized too).
test: setup build lint
	$(CARGO) test --workspace --doc
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --workspace --config-file $(NEXTEST_CONFIG)"; \
		$(CARGO) nextest run --workspace --config-file $(NEXTEST_CONFIG); \
	else \
		echo "cargo-nextest not found: using cargo test"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: build
	integration/bench.sh

# Deep fuzzing of the image reader with cargo-fuzz (nightly toolchain), seeded with the CRIU 4.2
# fixtures, for FUZZ_SECS seconds. The bounded stable-Rust fuzz test runs in `make test` already.
FUZZ_SECS ?= 300
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	mkdir -p src/images/fuzz/corpus/decode
	cp ../shared/fixtures/criu-4.2/*/images/*.img src/images/fuzz/corpus/decode/
	cd src/images && $(CARGO) +nightly fuzz run decode -- -max_total_time=$(FUZZ_SECS)

clean:
	$(CARGO) clean
