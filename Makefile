# sluice - the two commands of the README:
#   make run    install what is missing, build, run the demo
#   make test   install what is missing, build, run every test
#               (normal build, sanitizer build, format check, fuzzing)

DEBIAN_PACKAGES := build-essential cmake pkg-config clang clang-format libclang-rt-14-dev \
                   liblmdb-dev liblua5.4-dev libzstd-dev libevent-dev libcmocka-dev \
                   libhiredis-dev
BUILD      := build
ASAN_BUILD := build-asan
FUZZ_BUILD := build-fuzz
FUZZ_SECONDS ?= 30
JOBS       := $(shell nproc)

.PHONY: run test deps build build-asan unit unit-asan format-check fuzz bench clean

run: deps build
	bash examples/log_demo.sh $(BUILD)/runtime/sluice

test: deps format-check unit unit-asan fuzz

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

format-check:
	@files=$$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*'); \
	clang-format --dry-run --Werror $$files && echo "format: ok"

fuzz:
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	bash bench/run_log_bench.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
