#!/usr/bin/env bash
#
# run.sh - builds the fuzz targets (the batch decoder, the RESP request
# parser, the JSON tokenizer's two ways, and user functions run without
# Lua against the same functions run by Lua) and runs each for a while.
#
# Usage: tests/fuzz/run.sh [BUILD_DIR] [SECONDS]
#   BUILD_DIR  where binaries, the working corpus and any crash reproducer
#              go (default: <repo>/build-fuzz)
#   SECONDS    how long to fuzz each target (default: 30)
#
# Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev),
# libzstd-dev, liblmdb-dev, liblua5.4-dev, lua-cjson-dev, libjsmn-dev and
# libsimdjson-dev. Each fuzzer runs over a copy of its tests/fuzz/corpus*
# directory kept in BUILD_DIR, so new inputs never land in the committed
# seeds. Exits non-zero if the build fails or a fuzzer finds a crash, leak,
# undefined behaviour or (fuzz_native) a disagreement between native.c and
# Lua, or between a function on a value and on its projection; the reproducer is then BUILD_DIR/crash-* (replay: BUILD_DIR/<target>
# FILE).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build-fuzz}
seconds=${2:-30}
cc=${CC:-clang}
cxx=${CXX:-clang++}

# pkg-config is optional: plain -lzstd works wherever libzstd-dev is.
read -ra zstd_cflags <<<"$(pkg-config --cflags libzstd 2>/dev/null || true)"
read -ra zstd_libs <<<"$(pkg-config --libs libzstd 2>/dev/null || echo -lzstd)"
cflags=(-std=c11 -D_GNU_SOURCE -I "$root" "${zstd_cflags[@]}" -g -O1 -Wall -Wextra -Werror
        -fno-omit-frame-pointer -fno-sanitize-recover=all)
libs=("${zstd_libs[@]}" -lpthread)
# Only what the targets use: the rest of storage needs LMDB and more.
storage=("$root"/storage/{alloc,error,report,crc32c,buf,batch}.c)

mkdir -p "$build/corpus" "$build/corpus_resp" "$build/corpus_json" "$build/corpus_native"
build=$(cd "$build" && pwd)

"$cc" "${cflags[@]}" -fsanitize=fuzzer,address,undefined \
    "${storage[@]}" "$here/fuzz_batch.c" "${libs[@]}" -o "$build/fuzz_batch"
"$cc" "${cflags[@]}" -fsanitize=address,undefined \
    "${storage[@]}" "$here/make_corpus.c" "${libs[@]}" -o "$build/make_corpus"

"$cc" "${cflags[@]}" -fsanitize=fuzzer,address,undefined \
    "$root/queries/resp.c" "$root"/storage/{alloc,error}.c "$here/fuzz_resp.c" \
    -o "$build/fuzz_resp"

# The JSON target: jsontok.c alone (what tokenizing needs of a VM is in
# sl_vm_t), simdjson's scan through jsonscan.cc, linked as C++.
for src in "$root/lua/jsontok.c" "$here/fuzz_json.c" "$root"/storage/{alloc,error}.c; do
    "$cc" "${cflags[@]}" -fsanitize=fuzzer,address,undefined -c "$src" \
        -o "$build/json_$(basename "$src" .c).o"
done
"$cxx" -std=c++17 -I "$root" -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
    "$root/lua/jsonscan.cc" "$build"/json_*.o -lsimdjson -o "$build/fuzz_json"

# The native target: the whole lua module, Lua and lua-cjson. storage/ goes
# in as an archive, so that only what lua/ reaches is linked (its state
# and queue registry bring LMDB).
read -ra lua_cflags <<<"$(pkg-config --cflags lua5.4 lua5.4-cjson)"
read -ra lua_libs <<<"$(pkg-config --libs lua5.4 lua5.4-cjson)"
rm -rf "$build/native_lua" "$build/native_storage" "$build/native_storage.a"
mkdir -p "$build/native_lua" "$build/native_storage"
for src in "$root"/storage/*.c; do
    "$cc" "${cflags[@]}" -fsanitize=address,undefined -c "$src" \
        -o "$build/native_storage/$(basename "$src" .c).o"
done
ar rcs "$build/native_storage.a" "$build"/native_storage/*.o
for src in "$root"/lua/*.c "$here/fuzz_native.c"; do
    "$cc" "${cflags[@]}" "${lua_cflags[@]}" -fsanitize=fuzzer,address,undefined -c "$src" \
        -o "$build/native_lua/$(basename "$src" .c).o"
done
"$cxx" -std=c++17 -I "$root" -g -O1 -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
    "$root/lua/jsonscan.cc" "$build"/native_lua/*.o "$build/native_storage.a" \
    "${lua_libs[@]}" -lsimdjson -llmdb "${zstd_libs[@]}" -lm -lpthread \
    -o "$build/fuzz_native"

cp "$here"/corpus/* "$build/corpus/"
"$build/fuzz_batch" "$build/corpus" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$build/" -print_final_stats=1

# The RESP target reads its first 4 bytes as settings (limits, chunking).
cp "$here"/corpus_resp/* "$build/corpus_resp/"
"$build/fuzz_resp" "$build/corpus_resp" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$build/" -print_final_stats=1

cp "$here"/corpus_json/* "$build/corpus_json/"
"$build/fuzz_json" "$build/corpus_json" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$build/" -print_final_stats=1

# The native target reads "value [0x00 partner [0x00 key]]" (fuzz_native.c).
cp "$here"/corpus_native/* "$build/corpus_native/"
"$build/fuzz_native" "$build/corpus_native" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 \
    -artifact_prefix="$build/" -print_final_stats=1
