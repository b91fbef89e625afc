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

/* `sluice serve`: run the node. */
int cli_serve(int argc, char **argv);

/* `sluice run FILE.lua [serve options]`: a node running that pipeline. */
int cli_run_pipeline(int argc, char **argv);

/* `sluice submit FILE.lua` and `sluice pipelines`: pipelines on a node. */
int cli_submit(int argc, char **argv);
int cli_pipelines(int argc, char **argv);

/* `sluice log ...`: offline tools over a data directory. */
int cli_log(int argc, char **argv);

/* `sluice topics ...`: create, list, describe and delete topics on a node. */
int cli_topics(int argc, char **argv);

/* `sluice produce TOPIC`: send stdin's JSON lines to a node as records. */
int cli_produce(int argc, char **argv);

/* `sluice consume TOPIC`: print a topic's records, alone or in a group. */
int cli_consume(int argc, char **argv);

/* `sluice groups`: committed offsets, end offsets and lag of groups. */
int cli_groups(int argc, char **argv);

/* `sluice queue ...`: work queues on a node (declare, bind, publish, pop,
 * stats); `sluice worker QUEUE -- COMMAND`: COMMAND per message. */
int cli_queue(int argc, char **argv);
int cli_worker(int argc, char **argv);

/* `sluice features VIEW KEY` and `sluice features-at VIEW --input ...
 * --output ...`: feature vectors, live or as of a time, and point-in-time
 * features for rows of training data (cli_features.c). */
int cli_features(int argc, char **argv);

/* `sluice get STORE KEY`: a key's state (cli_get.c). */
int cli_get(int argc, char **argv);
int cli_features_at(int argc, char **argv);

/* Prints "sluice: <what>: <detail or error name>" and returns 1. */
int cli_fail(const char *what, int code);

/* The pipeline name a script file gives: its base name without ".lua". */
void cli_script_name(const char *path, char *out, size_t size);

/* Parses a non-negative decimal integer; 0 on success, -1 otherwise. */
int cli_parse_int(const char *text, int64_t *out);

/* A signed decimal integer of ms in the len bytes at text (no sign '+', no
 * space, no overflow); 0, or -1 if it is not one. */
int cli_parse_time(const char *text, size_t len, int64_t *out);

/* ---- talking to a node (cli_client.c) ---------------------------------- */

/*
 * The client commands speak RESP to a running node through hiredis. Every
 * argument goes out through its Argv calls, never through a format string;
 * record keys and values carry explicit lengths, so they are binary-safe.
 * Failures are one line on stderr: "sluice: <what>: <detail>".
 */
struct redisContext;
struct redisReply;

/* Where the node is and how to log in. */
typedef struct cli_server {
    const char *host;     /* default 127.0.0.1 */
    int port;             /* default 6380 */
    const char *password; /* NULL: no AUTH */
} cli_server_t;

/* getopt_long values of the options every client command takes, and the
 * matching `struct option` entries, --help included (include <getopt.h>;
 * the macro ends with a comma). */
enum { CLI_OPT_HOST = 0x100, CLI_OPT_PORT, CLI_OPT_PASSWORD };
#define CLI_SERVER_OPTIONS                                                                         \
    {"host", required_argument, NULL, CLI_OPT_HOST},                                               \
        {"port", required_argument, NULL, CLI_OPT_PORT},                                           \
        {"password", required_argument, NULL, CLI_OPT_PASSWORD}, {"help", no_argument, NULL, 'h'},

/* Usage lines for the options above, to end each command's usage text. */
#define CLI_SERVER_USAGE                                                                           \
    "  --host H          the node's address (default 127.0.0.1)\n"                                 \
    "  --port P          the node's RESP port (default 6380)\n"                                    \
    "  --password PASS   AUTH with PASS (a node started with --requirepass)\n"

/* Sets the defaults above. */
void cli_server_init(cli_server_t *s);

/* Takes a getopt_long result: 1 when it was a server option (stored), 0
 * when it is not one, -1 for a bad --port. value is kept, not copied. */
int cli_server_option(cli_server_t *s, int opt, const char *value);

/* Prints "sluice: <what>: <message>; see `sluice <command> --help`" and
 * returns 2, the usage-error exit status. */
int cli_usage_error(const char *command, const char *what, const char *message);

/* Explains getopt_long's '?' (unknown option) or ':' (missing value) for
 * argv[optind - 1] through cli_usage_error; returns 2. */
int cli_option_error(const char *command, const char *what, int opt, char **argv);

/* Connects (and AUTHs when a password is set). Returns a context to free
 * with redisFree(), or NULL after printing why not. */
struct redisContext *cli_connect(const cli_server_t *s);

/* Runs one command; lens may be NULL for NUL-terminated arguments. Returns
 * the reply, which the caller frees with freeReplyObject(), or NULL after
 * printing the server's error or the connection failure. */
struct redisReply *cli_run(struct redisContext *c, const char *what, int argc,
                           const char *const *argv, const size_t *lens);

/* Reads the next reply of a pipeline. Returns it (possibly an error reply;
 * the caller frees it) or NULL after printing the connection failure. */
struct redisReply *cli_next_reply(struct redisContext *c, const char *what);

/* Prints the error reply r ("sluice: <what>: <server text>"); returns 1. */
int cli_reply_error(const char *what, const struct redisReply *r);

/* Prints that the node's reply had an unexpected shape; returns 1. */
int cli_unexpected_reply(const char *what);

/* Whether r is an array of at least n elements. */
int cli_reply_is_array(const struct redisReply *r, size_t n);

/* Element i of array r as an integer; 0, or -1 when it is not one. */
int cli_reply_int(const struct redisReply *r, size_t i, long long *out);

/* ---- JSON lines (cli_json.c) -------------------------------------------- */

/* Longest field name cli_json_scan() looks for, in bytes. */
#define CLI_JSON_FIELD_MAX 256

typedef enum { CLI_JSON_ABSENT, CLI_JSON_STRING, CLI_JSON_NUMBER, CLI_JSON_OTHER } cli_json_type_t;

/* What cli_json_scan() found. Pointers point into the scanned text. */
typedef struct cli_json {
    cli_json_type_t type; /* the field's value; ABSENT when missing */
    const char *value;    /* the value as written (a string with its quotes) */
    size_t length;
    const char *error; /* when the text is invalid: what is wrong (static) */
    size_t column;     /* when the text is invalid: 1-based byte position */
} cli_json_t;

/* Checks that text[0..len) is exactly one JSON value (RFC 8259, UTF-8)
 * between optional whitespace. When field is not NULL (shorter than
 * CLI_JSON_FIELD_MAX) and the value is an object, also finds its top-level
 * member of that name (compared after unescaping; the last one if repeated,
 * as JSON.parse does). Returns 0, or -1 with out->error and out->column. */
int cli_json_scan(const char *text, size_t len, const char *field, cli_json_t *out);

/* Decodes a string value found by cli_json_scan() (quotes included) into
 * out, which has room for len bytes (or NULL, to measure only); returns the
 * decoded length. */
size_t cli_json_unescape(const char *quoted, size_t len, char *out);

#endif
