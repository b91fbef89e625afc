/*
 * test_lua_sandbox.c - what a pipeline script cannot do: reach io, os,
 * package, debug or bytecode; escape its instruction or memory limits
 * (and the VM stays usable after hitting them); share globals with another
 * script; crash the VM when the process runs out of memory.
 */
#include "testutil.h"

#include "lua/lua.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <lua5.4/lauxlib.h>
#include <lua5.4/lualib.h>

#define HEADER "local s = require('sluice')\n"
#define SINK   "\ns.stream('in'):to('out')\n"

static int setup(void **state)
{
    sl_vm_t *vm;
    assert_int_equal(sl_vm_new(NULL, &vm), 0);
    *state = vm;
    return 0;
}

static int teardown(void **state)
{
    sl_vm_free(*state);
    return 0;
}

/* Compiles HEADER + body + SINK; returns the code (the DAG is freed). */
static int run(sl_vm_t *vm, const char *body)
{
    char script[16384];
    sl_dag_t *dag = NULL;
    snprintf(script, sizeof script, HEADER "%s" SINK, body);
    int rc = sl_vm_compile(vm, "script.lua", script, strlen(script), &dag);
    sl_dag_free(dag);
    return rc;
}

static void expect_ok(sl_vm_t *vm, const char *body)
{
    if (run(vm, body) != 0)
        fail_msg("%s", sl_error_detail());
}

static void expect_error(sl_vm_t *vm, const char *body, const char *message)
{
    assert_int_equal(run(vm, body), SL_EINVALID);
    assert_string_equal(sl_error_detail(), message);
}

static void test_io_is_absent(void **state)
{
    expect_error(*state, "io.open('/etc/passwd')",
                 "script.lua:2: attempt to index a nil value (global 'io')");
}

static void test_os_execute_is_absent(void **state)
{
    expect_error(*state, "os.execute('true')",
                 "script.lua:2: attempt to call a nil value (field 'execute')");
}

static void test_os_has_only_time_clock_and_date(void **state)
{
    expect_ok(*state, "local n = 0 for k in pairs(os) do n = n + 1 end assert(n == 3)");
    expect_ok(*state, "assert(os.time() > 1600000000 and os.clock() >= 0)\n"
                      "assert(#os.date('%Y-%m-%d') == 10 and os.date('*t').year >= 2024)");
}

static void test_package_debug_dofile_loadfile_are_absent(void **state)
{
    expect_ok(*state, "assert(package == nil and debug == nil and coroutine == nil)\n"
                      "assert(dofile == nil and loadfile == nil)");
}

static void test_require_serves_only_sluice_and_json(void **state)
{
    expect_error(*state, "require('os')",
                 "script.lua:2: module 'os' is not available in the sandbox (only sluice, json)");
    expect_error(*state, "require('io')",
                 "script.lua:2: module 'io' is not available in the sandbox (only sluice, json)");
    expect_ok(*state, "assert(require('sluice') == s and require('json') == require('cjson'))");
}

static void test_json_module_keeps_only_safe_settings(void **state)
{
    expect_ok(*state,
              "local json = require('json')\n"
              "assert(json.new == nil and json.encode_keep_buffer == nil)\n"
              "assert(json.encode_max_depth == nil and json.decode_max_depth == nil)\n"
              "assert(json.encode_number_precision(3) == 3 and json.encode(1/3) == '0.333')");
    expect_ok(*state, "assert(require('json').encode(1/3) == '0.33333333333333')");
}

static void test_json_decode_input_is_bounded(void **state)
{
    expect_error(*state, "require('json').decode(string.rep(' ', 3e6) .. '1')",
                 "script.lua:2: json.decode: input of 3000001 bytes is over the sandbox's 2097152");
}

static void test_json_encode_of_a_huge_value_is_refused(void **state)
{
    expect_error(*state,
                 "local big, list = string.rep('x', 1e6), {}\n"
                 "for i = 1, 100 do list[i] = big end\n"
                 "require('json').encode(list)",
                 "script.lua:4: the value's JSON text could exceed 67108864 bytes");
}

static void test_finalizers_are_refused(void **state)
{
    expect_error(*state, "setmetatable({}, {__gc = function() end})",
                 "script.lua:2: setmetatable: __gc (finalizers) is not allowed in the sandbox");
    expect_ok(*state, "local t = setmetatable({}, {__index = function() return 1 end})\n"
                      "assert(t.x == 1)");
}

static void test_json_module_is_lua_cjson(void **state)
{
    expect_ok(*state, "local json = require('json')\n"
                      "assert(json.encode({a = 1}) == '{\"a\":1}')\n"
                      "assert(json.decode('[1, 2]')[2] == 2 and json.null == s.null)");
}

typedef struct bytes {
    unsigned char data[4096];
    size_t len;
} bytes_t;

static int append_bytes(lua_State *L, const void *p, size_t n, void *ud)
{
    (void)L;
    bytes_t *out = ud;
    assert_true(out->len + n <= sizeof out->data);
    memcpy(out->data + out->len, p, n);
    out->len += n;
    return 0;
}

/* Bytecode for "return 1" from a separate, unsandboxed Lua. */
static void bytecode(bytes_t *out)
{
    lua_State *L = luaL_newstate();
    out->len = 0;
    assert_int_equal(luaL_loadstring(L, "return 1"), LUA_OK);
    assert_int_equal(lua_dump(L, append_bytes, out, 1), 0);
    lua_close(L);
}

static void test_load_refuses_bytecode(void **state)
{
    bytes_t code;
    char body[8192];
    size_t used;
    bytecode(&code);
    used = (size_t)snprintf(body, sizeof body, "local code = '");
    for (size_t i = 0; i < code.len; i++)
        used += (size_t)snprintf(body + used, sizeof body - used, "\\%u", code.data[i]);
    snprintf(body + used, sizeof body - used,
             "'\n"
             "local f, err = load(code)\n"
             "assert(f == nil and err == \"attempt to load a binary chunk (mode is 't')\", err)\n"
             "assert(load(code, 'x', 'b') == nil and load(code, 'x', 'bt') == nil)");
    expect_ok(*state, body);
}

static void test_bytecode_script_is_refused(void **state)
{
    bytes_t code;
    sl_dag_t *dag = NULL;
    bytecode(&code);
    assert_int_equal(sl_vm_compile(*state, "script.lua", (const char *)code.data, code.len, &dag),
                     SL_EINVALID);
    assert_string_equal(sl_error_detail(),
                        "script.lua: attempt to load a binary chunk (mode is 't')");
}

static void test_load_of_text_sees_the_script_globals(void **state)
{
    expect_ok(*state, "x = 5\n"
                      "local a, b, c = load('return io, string.rep, x')()\n"
                      "assert(a == nil and b ~= nil and c == 5)\n"
                      "local env = {y = 1}\n"
                      "assert(load('return y, string', 'chunk', 't', env)() == 1)");
}

static void test_string_dump_is_absent(void **state)
{
    expect_ok(*state, "assert(string.dump == nil and ('').dump == nil)");
}

static void test_string_metatable_is_hidden(void **state)
{
    expect_ok(*state, "assert(getmetatable('') == false and ('x'):upper() == 'X')");
}

static void test_collectgarbage_allows_only_count(void **state)
{
    expect_ok(*state, "assert(collectgarbage('count') > 0)");
    expect_error(*state, "collectgarbage()",
                 "script.lua:2: collectgarbage('collect') is not allowed in the sandbox (only "
                 "'count')");
    expect_error(*state, "collectgarbage('stop')",
                 "script.lua:2: collectgarbage('stop') is not allowed in the sandbox (only "
                 "'count')");
}

static void test_print_is_available(void **state)
{
    expect_ok(*state, "print('sandbox print:', 1, nil, {})");
}

static void test_scripts_do_not_share_globals_or_libraries(void **state)
{
    expect_ok(*state, "string.format = nil\nshared = 1\nmath.pi = 3");
    expect_ok(*state, "assert(string.format and shared == nil and math.pi > 3.14)");
}

static void test_instruction_limit_stops_a_runaway_script(void **state)
{
    expect_error(*state, "\nwhile true do end",
                 "script.lua:3: instruction limit exceeded (10000000 instructions)");
    expect_ok(*state, "local x = 0 for i = 1, 1000 do x = x + i end assert(x == 500500)");
}

static void test_pcall_cannot_catch_the_instruction_limit(void **state)
{
    expect_error(*state, "while true do pcall(function() while true do end end) end",
                 "script.lua:2: instruction limit exceeded (10000000 instructions)");
    expect_error(*state,
                 "while true do xpcall(function() while true do end end, function(e) return e "
                 "end) end",
                 "script.lua:2: instruction limit exceeded (10000000 instructions)");
    expect_ok(*state, "assert(not pcall(error, 'x') and select(2, pcall(error, 'y', 0)) == 'y')");
}

static void test_memory_cap_stops_string_rep(void **state)
{
    expect_error(*state, "local x = string.rep('x', 1e9)",
                 "script.lua:2: memory limit exceeded (67108864 bytes)");
    expect_ok(*state, "assert(#string.rep('x', 1000) == 1000)");
}

static void test_memory_cap_stops_a_growing_table(void **state)
{
    (void)state;
    sl_vm_t *vm;
    sl_vm_limits_t limits = {.memory_bytes = 4 << 20};
    assert_int_equal(sl_vm_new(&limits, &vm), 0);
    expect_error(vm, "local t = {}\nfor i = 1, 1e8 do t[i] = {i} end",
                 "script.lua:3: memory limit exceeded (4194304 bytes)");
    assert_true(sl_vm_memory(vm) <= limits.memory_bytes);
    expect_ok(vm, "local t = {} for i = 1, 1000 do t[i] = {i} end");
    sl_vm_free(vm);
}

static void test_pcall_may_catch_a_memory_error(void **state)
{
    expect_ok(*state, "local ok, err = pcall(string.rep, 'x', 1e9)\n"
                      "assert(not ok and err == 'not enough memory')");
}

static void test_limits_are_configurable(void **state)
{
    (void)state;
    sl_vm_t *vm;
    sl_vm_limits_t limits = {.instructions = 100000};
    assert_int_equal(sl_vm_new(&limits, &vm), 0);
    expect_ok(vm, "for i = 1, 1000 do end");
    expect_error(vm, "for i = 1, 1e7 do end",
                 "script.lua:2: instruction limit exceeded (100000 instructions)");
    sl_vm_free(vm);
}

static void test_memory_limit_too_small_to_start_is_enomem(void **state)
{
    (void)state;
    sl_vm_t *vm = NULL;
    sl_vm_limits_t limits = {.memory_bytes = 4096};
    assert_int_equal(sl_vm_new(&limits, &vm), -ENOMEM);
    assert_null(vm);
}

/* Makes every allocation from the nth on fail while creating a VM and
 * compiling a script: each attempt fails with -ENOMEM or succeeds, and
 * nothing leaks (the sanitizer build checks). */
static void test_out_of_memory_anywhere_is_enomem(void **state)
{
    (void)state;
    static const char script[] = HEADER "s.stream('a'):map(function(r) return r end):to('b')\n";
    int succeeded = 0;
    for (long n = 0; n < 20000 && !succeeded; n++) {
        sl_vm_t *vm = NULL;
        sl_dag_t *dag = NULL;
        sl_alloc_fail_after(n);
        int rc = sl_vm_new(NULL, &vm);
        if (rc == 0)
            rc = sl_vm_compile(vm, "script.lua", script, strlen(script), &dag);
        sl_alloc_fail_after(-1);
        if (rc != 0 && rc != -ENOMEM)
            fail_msg("allocation %ld: %s: %s", n, sl_strerror(rc), sl_error_detail());
        succeeded = rc == 0;
        sl_dag_free(dag);
        sl_vm_free(vm);
    }
    assert_true(succeeded);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_io_is_absent),
        T(test_os_execute_is_absent),
        T(test_os_has_only_time_clock_and_date),
        T(test_package_debug_dofile_loadfile_are_absent),
        T(test_require_serves_only_sluice_and_json),
        T(test_json_module_is_lua_cjson),
        T(test_json_module_keeps_only_safe_settings),
        T(test_json_decode_input_is_bounded),
        T(test_json_encode_of_a_huge_value_is_refused),
        T(test_finalizers_are_refused),
        T(test_load_refuses_bytecode),
        T(test_bytecode_script_is_refused),
        T(test_load_of_text_sees_the_script_globals),
        T(test_string_dump_is_absent),
        T(test_string_metatable_is_hidden),
        T(test_collectgarbage_allows_only_count),
        T(test_print_is_available),
        T(test_scripts_do_not_share_globals_or_libraries),
        T(test_instruction_limit_stops_a_runaway_script),
        T(test_pcall_cannot_catch_the_instruction_limit),
        T(test_memory_cap_stops_string_rep),
        T(test_memory_cap_stops_a_growing_table),
        T(test_pcall_may_catch_a_memory_error),
        T(test_limits_are_configurable),
        T(test_memory_limit_too_small_to_start_is_enomem),
        T(test_out_of_memory_anywhere_is_enomem),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
