/*
 * cli_features.c - feature views from the command line (docs/cli.md):
 *
 *   sluice features VIEW KEY [--as-of MS] [--format json|f32]
 *   sluice features-at VIEW --input labels.csv --output features.csv
 *
 * features-at makes training data: for each row "key,timestamp[,...]" of
 * the input, the view's features as of that timestamp (point in time: only
 * buckets complete at that time, docs/commands.md "Feature views"), written
 * as the same row with one column per feature appended, in schema order.
 * Rows go to the node in batches, one MFEATURES ... POINTS per batch (one
 * round trip, one LMDB read transaction), so a batch of rows is answered
 * from one committed state. A first row whose timestamp is not a number is
 * a header: the feature names are appended to it.
 *
 * CSV: the key is the first field, quoted or not ("a,b" and "a""b" work);
 * the timestamp the second, an integer of ms since the epoch; the rest of
 * the row is copied as is. Lines end in LF or CRLF and are written with LF.
 * A null feature (an empty min, max, avg or last) and every feature of a
 * key the view has no data for are empty cells. A key the node refuses
 * (a time beyond the store's retention) stops the run with the row's line
 * number: training data with silently missing features is worse than none.
 *
 * On a terminal, stderr shows a progress bar (the share of the input read)
 * and a summary.
 */
#include "runtime/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_DEFAULT 500
#define BATCH_MAX     100000
#define BAR_WIDTH     30

static const char features_usage[] =
    "usage: sluice features VIEW KEY [options]\n"
    "\n"
    "Prints KEY's feature vector of VIEW (FEATURES): a JSON object, or with\n"
    "--format f32 the float32 values separated by spaces; null if the key has\n"
    "no data and the view no defaults.\n"
    "\n"
    "  --as-of MS        the vector as of MS ms since the epoch (the buckets\n"
    "                    complete then); default: now\n"
    "  --format F        json (default) or f32\n" CLI_SERVER_USAGE;

static const char features_at_usage[] =
    "usage: sluice features-at VIEW --input LABELS.csv --output FEATURES.csv [options]\n"
    "\n"
    "Point-in-time training data: reads rows KEY,TIMESTAMP[,LABEL...] (TIMESTAMP\n"
    "in ms since the epoch; the key may be quoted) and writes each row with\n"
    "VIEW's features as of TIMESTAMP appended, one column per feature in the\n"
    "view's schema order (FEATURES.SCHEMA); empty cells for null values and keys\n"
    "without data. A first row whose TIMESTAMP is not a number is a header: the\n"
    "feature names are appended to it. A row the node refuses (a time beyond\n"
    "the view's retention) stops the run. '-' reads stdin or writes stdout.\n"
    "\n"
    "  --input FILE      the labelled rows (required)\n"
    "  --output FILE     where the rows with features go (required)\n"
    "  --batch N         rows per request (default 500, at most 100000)\n" CLI_SERVER_USAGE;

/* Prints "sluice: features-at: <message>" and returns 1. */
static int fail_at(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail_at(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sluice: features-at: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* ---- sluice features ------------------------------------------------------------ */

typedef struct one {
    cli_server_t server;
    const char *view, *key, *as_of, *format;
} one_t;

static int parse_features(int argc, char **argv, one_t *o)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"as-of", required_argument, NULL, 'a'},
        {"format", required_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    int64_t t;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&o->server, c, optarg);
        if (c == 'h')
            return fputs(features_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("features", "features", c, argv);
        if (server < 0)
            return cli_usage_error("features", "features", "--port needs a number from 1 to 65535");
        if (c == 'a' && cli_parse_time(optarg, strlen(optarg), &t))
            return cli_usage_error("features", "features", "--as-of needs a time in ms");
        if (c == 'a')
            o->as_of = optarg;
        if (c == 'f' && strcmp(optarg, "json") && strcmp(optarg, "f32"))
            return cli_usage_error("features", "features", "--format is json or f32");
        if (c == 'f')
            o->format = optarg;
    }
    if (argc - optind != 2)
        return cli_usage_error("features", "features",
                               argc - optind < 2 ? "which view and key?" : "too many arguments");
    o->view = argv[optind];
    o->key = argv[optind + 1];
    return 0;
}

/* The float32 values of an f32 reply, space-separated. */
static void print_f32(const redisReply *r)
{
    for (size_t i = 0; i + 4 <= r->len; i += 4) {
        const unsigned char *b = (const unsigned char *)r->str + i;
        uint32_t bits =
            (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        float f;
        memcpy(&f, &bits, 4);
        printf("%s%.9g", i ? " " : "", (double)f);
    }
    putchar('\n');
}

int cli_features(int argc, char **argv)
{
    one_t o = {.format = "json"};
    cli_server_init(&o.server);
    int rc = parse_features(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    redisContext *c = cli_connect(&o.server);
    if (!c)
        return 1;
    const char *args[] = {"FEATURES", o.view, o.key, "FORMAT", o.format, "AS", "OF", o.as_of};
    redisReply *r = cli_run(c, "features", o.as_of ? 8 : 5, args, NULL); /* options: any order */
    rc = r ? 0 : 1;
    if (r && r->type == REDIS_REPLY_NIL)
        puts("null");
    else if (r && r->type == REDIS_REPLY_STRING && !strcmp(o.format, "f32"))
        print_f32(r);
    else if (r && r->type == REDIS_REPLY_STRING)
        printf("%.*s\n", (int)r->len, r->str);
    else if (r)
        rc = cli_unexpected_reply("features");
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return rc;
}

/* ---- sluice features-at --------------------------------------------------------- */

/* One input row waiting for its features. */
typedef struct row {
    char *line; /* without its line end */
    size_t len;
    size_t key_at, key_len; /* the key, unquoted, in keys */
    char time[24];          /* as given */
    long long number;       /* its line number */
} row_t;

typedef struct job {
    cli_server_t server;
    const char *view, *input, *output;
    int64_t batch;
    redisContext *c;
    FILE *in, *out;
    char **names; /* the schema's feature names */
    size_t count;
    row_t *rows;
    size_t row_count;
    char *keys; /* the rows' unquoted keys */
    size_t keys_len, keys_cap;
    long long line, written;
    int started;            /* a row was read: no header any more */
    off_t size, read_bytes; /* for the progress bar; size 0: unknown */
    int bar;                /* stderr is a terminal */
    struct timespec shown;
} job_t;

static int parse_features_at(int argc, char **argv, job_t *j)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},
        {"batch", required_argument, NULL, 'b'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&j->server, c, optarg);
        if (c == 'h')
            return fputs(features_at_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("features-at", "features-at", c, argv);
        if (server < 0)
            return cli_usage_error("features-at", "features-at",
                                   "--port needs a number from 1 to 65535");
        if (c == 'i')
            j->input = optarg;
        else if (c == 'o')
            j->output = optarg;
        else if (c == 'b' &&
                 (cli_parse_int(optarg, &j->batch) || j->batch < 1 || j->batch > BATCH_MAX))
            return cli_usage_error("features-at", "features-at",
                                   "--batch needs a number from 1 to 100000");
    }
    if (argc - optind != 1)
        return cli_usage_error("features-at", "features-at",
                               argc == optind ? "which view?" : "too many arguments");
    if (!j->input || !j->output)
        return cli_usage_error("features-at", "features-at", "--input and --output are required");
    j->view = argv[optind];
    return 0;
}

/* The view's feature names, from FEATURES.SCHEMA. */
static int read_schema(job_t *j)
{
    const char *const argv[] = {"FEATURES.SCHEMA", j->view};
    redisReply *r = cli_run(j->c, "features-at", 2, argv, NULL);
    if (!r)
        return 1;
    int rc =
        r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? 0 : cli_unexpected_reply("features-at");
    j->names = rc ? NULL : calloc(r->elements, sizeof *j->names);
    for (size_t i = 0; rc == 0 && i < r->elements; i++) {
        const redisReply *row = r->element[i];
        if (!cli_reply_is_array(row, 1) || row->element[0]->type != REDIS_REPLY_STRING)
            rc = cli_unexpected_reply("features-at");
        else if (row->element[0]->len >= CLI_JSON_FIELD_MAX)
            rc = fail_at("feature '%.40s...' has a name over %d bytes", row->element[0]->str,
                         CLI_JSON_FIELD_MAX - 1);
        else if (!(j->names[j->count++] = strndup(row->element[0]->str, row->element[0]->len)))
            rc = cli_fail("features-at", -ENOMEM);
    }
    freeReplyObject(r);
    return rc;
}

/* ---- CSV ---------------------------------------------------------------------- */

/* Writes a field, quoted when it must be. */
static void write_field(FILE *f, const char *text, size_t len)
{
    if (!memchr(text, ',', len) && !memchr(text, '"', len) && !memchr(text, '\n', len)) {
        fwrite(text, 1, len, f);
        return;
    }
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '"')
            fputc('"', f);
        fputc(text[i], f);
    }
    fputc('"', f);
}

static int keep_key_byte(job_t *j, char ch)
{
    if (j->keys_len == j->keys_cap) {
        size_t cap = j->keys_cap ? 2 * j->keys_cap : 4096;
        char *grown = realloc(j->keys, cap);
        if (!grown)
            return -1;
        j->keys = grown;
        j->keys_cap = cap;
    }
    j->keys[j->keys_len++] = ch;
    return 0;
}

/* Splits the row's key (unquoted into keys) and time; the position after
 * the time field, or -1 with *why. */
static long split_row(job_t *j, row_t *row, const char **why)
{
    const char *s = row->line;
    size_t i = 0, n = row->len;
    row->key_at = j->keys_len;
    if (n && s[0] == '"') {
        for (i = 1;; i++) {
            if (i >= n)
                return *why = "the quoted key has no closing quote", -1;
            if (s[i] == '"' && !(i + 1 < n && s[i + 1] == '"'))
                break;
            i += s[i] == '"';
            if (keep_key_byte(j, s[i]))
                return *why = "out of memory", -1;
        }
        i++;
    } else {
        for (; i < n && s[i] != ','; i++)
            if (keep_key_byte(j, s[i]))
                return *why = "out of memory", -1;
    }
    row->key_len = j->keys_len - row->key_at;
    if (i >= n || s[i] != ',')
        return *why = "a row is KEY,TIMESTAMP[,...]: the timestamp is missing", -1;
    size_t t = ++i;
    while (i < n && s[i] != ',')
        i++;
    while (t < i && s[t] == ' ')
        t++;
    size_t end = i;
    while (end > t && (s[end - 1] == ' ' || s[end - 1] == '"'))
        end--;
    if (t < end && s[t] == '"')
        t++;
    if (end - t >= sizeof row->time)
        return *why = "the timestamp is not a time in ms", -1;
    memcpy(row->time, s + t, end - t);
    row->time[end - t] = 0;
    return (long)i;
}

/* ---- batches ------------------------------------------------------------------- */

/* Writes row with the features of reply v (a JSON object or nil). */
static int write_row(job_t *j, const row_t *row, const redisReply *v)
{
    cli_json_t found;
    fwrite(row->line, 1, row->len, j->out);
    for (size_t i = 0; i < j->count; i++) {
        fputc(',', j->out);
        if (v->type != REDIS_REPLY_STRING)
            continue;
        if (cli_json_scan(v->str, v->len, j->names[i], &found) || found.type == CLI_JSON_ABSENT)
            return fail_at("the node's vector for line %lld lacks %s", row->number, j->names[i]);
        if (found.type == CLI_JSON_NUMBER)
            fwrite(found.value, 1, found.length, j->out);
    }
    fputc('\n', j->out);
    j->written++;
    return 0;
}

static int check_reply(job_t *j, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != j->row_count)
        return cli_unexpected_reply("features-at");
    for (size_t i = 0; i < j->row_count; i++) {
        const redisReply *v = r->element[i];
        const row_t *row = &j->rows[i];
        if (v->type == REDIS_REPLY_ERROR)
            return fail_at("line %lld (key '%.*s' at %s): %.*s", row->number, (int)row->key_len,
                           j->keys + row->key_at, row->time, (int)v->len, v->str);
        if (v->type != REDIS_REPLY_STRING && v->type != REDIS_REPLY_NIL)
            return cli_unexpected_reply("features-at");
    }
    return 0;
}

/* Asks for the batch's features and writes its rows. */
static int run_batch(job_t *j)
{
    size_t argc = 5 + 2 * j->row_count;
    const char **argv = malloc(argc * sizeof *argv);
    size_t *lens = malloc(argc * sizeof *lens);
    int rc = argv && lens ? 0 : cli_fail("features-at", -ENOMEM);
    const char *head[] = {"MFEATURES", j->view, "FORMAT", "json", "POINTS"};
    for (size_t i = 0; rc == 0 && i < 5; i++) {
        argv[i] = head[i];
        lens[i] = strlen(head[i]);
    }
    for (size_t i = 0; rc == 0 && i < j->row_count; i++) {
        const row_t *row = &j->rows[i];
        argv[5 + 2 * i] = j->keys + row->key_at;
        lens[5 + 2 * i] = row->key_len;
        argv[6 + 2 * i] = row->time;
        lens[6 + 2 * i] = strlen(row->time);
    }
    redisReply *r = rc ? NULL : cli_run(j->c, "features-at", (int)argc, argv, lens);
    rc = rc ? rc : r ? check_reply(j, r) : 1;
    for (size_t i = 0; rc == 0 && i < j->row_count; i++)
        rc = write_row(j, &j->rows[i], r->element[i]);
    if (r)
        freeReplyObject(r);
    free(argv);
    free(lens);
    for (size_t i = 0; i < j->row_count; i++)
        free(j->rows[i].line);
    j->row_count = 0;
    j->keys_len = 0;
    if (rc == 0 && ferror(j->out))
        rc = fail_at("cannot write %s: %s", j->output, strerror(errno));
    return rc;
}

/* ---- progress ----------------------------------------------------------------------- */

static void show_progress(job_t *j, int last)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms =
        (now.tv_sec - j->shown.tv_sec) * 1000LL + (now.tv_nsec - j->shown.tv_nsec) / 1000000;
    if (!j->bar || (!last && ms < 100))
        return;
    j->shown = now;
    double share = j->size > 0 ? (double)j->read_bytes / (double)j->size : 0;
    int filled = (int)(share * BAR_WIDTH + 0.5);
    fprintf(stderr, "\rfeatures-at [%.*s%.*s] %3d%% %lld rows", filled,
            "##############################", BAR_WIDTH - filled, "..............................",
            (int)(share * 100 + 0.5), j->written);
    if (last)
        fprintf(stderr, "\nfeatures-at: %lld rows with %zu features each written to %s\n",
                j->written, j->count, j->output);
}

/* ---- the run ------------------------------------------------------------------------ */

static int header_row(job_t *j, const char *line, size_t len)
{
    fwrite(line, 1, len, j->out);
    for (size_t i = 0; i < j->count; i++) {
        fputc(',', j->out);
        write_field(j->out, j->names[i], strlen(j->names[i]));
    }
    fputc('\n', j->out);
    return 0;
}

/* Takes one input line (its end cut off); 1 after an error. */
static int take_line(job_t *j, char *line, size_t len)
{
    const char *why = NULL;
    int64_t t;
    row_t *row = &j->rows[j->row_count];
    *row = (row_t){.line = line, .len = len, .number = ++j->line};
    if (split_row(j, row, &why) < 0 || cli_parse_time(row->time, strlen(row->time), &t)) {
        if (!j->started && !why) { /* a header */
            j->started = 1;
            j->keys_len = row->key_at;
            header_row(j, line, len);
            free(line);
            return 0;
        }
        free(line);
        return fail_at("%s line %lld: %s", j->input, j->line,
                       why ? why : "the timestamp is not a time in ms since the epoch");
    }
    j->started = 1;
    if (row->key_len == 0) {
        free(line);
        return fail_at("%s line %lld: the key is empty", j->input, j->line);
    }
    j->row_count++;
    return j->row_count == (size_t)j->batch ? run_batch(j) : 0;
}

static int run_rows(job_t *j)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&line, &cap, j->in)) >= 0) {
        j->read_bytes += n;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0) {
            j->line++;
            continue;
        }
        char *copy = strndup(line, (size_t)n);
        rc = copy ? take_line(j, copy, (size_t)n) : cli_fail("features-at", -ENOMEM);
        show_progress(j, 0);
    }
    free(line);
    if (rc == 0 && ferror(j->in))
        rc = fail_at("cannot read %s: %s", j->input, strerror(errno));
    if (rc == 0 && j->row_count)
        rc = run_batch(j);
    return rc;
}

static int open_files(job_t *j)
{
    struct stat st;
    j->in = strcmp(j->input, "-") ? fopen(j->input, "r") : stdin;
    if (!j->in)
        return fail_at("cannot open %s: %s", j->input, strerror(errno));
    j->out = strcmp(j->output, "-") ? fopen(j->output, "w") : stdout;
    if (!j->out)
        return fail_at("cannot create %s: %s", j->output, strerror(errno));
    if (fstat(fileno(j->in), &st) == 0 && S_ISREG(st.st_mode))
        j->size = st.st_size;
    j->bar = isatty(STDERR_FILENO);
    return 0;
}

static void close_job(job_t *j)
{
    for (size_t i = 0; i < j->count; i++)
        free(j->names[i]);
    free(j->names);
    for (size_t i = 0; i < j->row_count; i++)
        free(j->rows[i].line);
    free(j->rows);
    free(j->keys);
    if (j->in && j->in != stdin)
        fclose(j->in);
    if (j->c)
        redisFree(j->c);
}

int cli_features_at(int argc, char **argv)
{
    job_t j = {.batch = BATCH_DEFAULT};
    cli_server_init(&j.server);
    int rc = parse_features_at(argc, argv, &j);
    if (rc)
        return rc == 1 ? 0 : rc;
    if (!(j.rows = calloc((size_t)j.batch, sizeof *j.rows)))
        return cli_fail("features-at", -ENOMEM);
    j.c = cli_connect(&j.server);
    rc = j.c ? read_schema(&j) : 1;
    if (rc == 0)
        rc = open_files(&j);
    if (rc == 0)
        rc = run_rows(&j);
    if (rc == 0)
        show_progress(&j, 1);
    else if (j.bar)
        fputc('\n', stderr);
    if (j.out && j.out != stdout && fclose(j.out) && rc == 0)
        rc = fail_at("cannot write %s: %s", j.output, strerror(errno));
    else if (j.out == stdout && fflush(stdout) && rc == 0)
        rc = 1;
    close_job(&j);
    return rc;
}
