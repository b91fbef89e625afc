# sluice - the two commands of the README:
#   make run    install what is missing, build, run the demo (a node on the
#               embedded default, fed and read through the CLI)
#   make test   install what is missing, build, run every test: unit tests
#               and integration tests (a real node, redis-cli, python3-redis)
#               on the normal and the ASan+UBSan build, format check, fuzzing

DEBIAN_PACKAGES := build-essential cmake pkg-config clang clang-format libclang-rt-14-dev \
                   liblmdb-dev liblua5.4-dev libzstd-dev libevent-dev libcmocka-dev \
                   lua-cjson-dev libjsmn-dev libsimdjson-dev libhiredis-dev redis-server redis-tools python3-redis curl
BUILD      := build
ASAN_BUILD := build-asan
FUZZ_BUILD := build-fuzz
FUZZ_SECONDS ?= 30
JOBS       := $(shell nproc)

.PHONY: run test deps build build-asan unit unit-asan integration integration-asan \
        format-check fuzz bench clean

run: deps build
	bash examples/log_demo.sh $(BUILD)/runtime/sluice
	bash examples/node_demo.sh $(BUILD)/runtime/sluice

test: deps format-check unit unit-asan integration integration-asan fuzz

# Installs only the Debian packages that are missing (needs root and apt).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j$(JOBS)

build-asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSLUICE_SANITIZE=ON -DSLUICE_BENCH=OFF
	cmake --build $(ASAN_BUILD) -j$(JOBS)

unit: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

unit-asan: build-asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j$(JOBS)

integration: build
	SLUICE_BIN=$(CURDIR)/$(BUILD)/runtime/sluice bash tests/integration/run.sh

integration-asan: build-asan
	SLUICE_BIN=$(CURDIR)/$(ASAN_BUILD)/runtime/sluice \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 bash tests/integration/run.sh

format-check:
	@files=$$(git ls-files '*.c' '*.h' '*.cc' 2>/dev/null || find . \( -name '*.[ch]' -o -name '*.cc' \) -not -path './build*'); \
	clang-format --dry-run --Werror $$files && echo "format: ok"

fuzz:
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	bash bench/run_log_bench.sh
	bash bench/resp_bench.sh $(BUILD)/runtime/sluice
	sh bench/queue_bench.sh $(BUILD)/runtime/sluice
	SLUICE_BIN=$(CURDIR)/$(BUILD)/runtime/sluice bash bench/window_bench.sh
	SLUICE_BIN=$(CURDIR)/$(BUILD)/runtime/sluice bash bench/features_bench.sh
	SLUICE_BIN=$(CURDIR)/$(BUILD)/runtime/sluice bash bench/join_bench.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
