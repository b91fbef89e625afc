/*
 * cli.h - the sluice command line: subcommands and their shared helpers.
 *
 * Every subcommand is `int cli_<name>(int argc, char **argv)` taking the
 * arguments after its name and returning the process exit status: 0 on
 * success, 1 when the operation failed (one clear line on stderr), 2 for a
 * usage error.
 */
#ifndef SL_CLI_H
#define SL_CLI_H

#include "storage/storage.h"

/* `sluice log ...`: offline tools over a data directory. */
int cli_log(int argc, char **argv);

/* Prints "sluice: <what>: <detail or error name>" and returns 1. */
int cli_fail(const char *what, int code);

/* Parses a non-negative decimal integer; 0 on success, -1 otherwise. */
int cli_parse_int(const char *text, int64_t *out);

#endif
