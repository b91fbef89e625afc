/*
 * cli_worker.c - `sluice worker QUEUE -- COMMAND [ARG...]`: runs COMMAND
 * once per message of QUEUE, with the payload on its standard input, and
 * acknowledges the message when COMMAND exits 0, rejects it otherwise.
 *
 * The loop: QPOP one message (blocking up to a second, so a signal is
 * noticed), run COMMAND in a child process (stdout and stderr are the
 * worker's), feed it the payload through a pipe, wait for it, then ACK or
 * NACK. A failed message goes back to the queue (NACK REQUEUE) until the
 * queue's MAXDELIVERIES sends it to its dead-letter queue; with
 * --no-requeue it is dead-lettered at once. The message stays leased while
 * COMMAND runs (the queue's LEASE, or --lease): one that outlives its lease
 * is delivered again elsewhere, and its late ACK counts for nothing.
 *
 * --concurrency N runs N such loops, each in its own process with its own
 * connection: a worker fleet in one line. SIGINT or SIGTERM lets every
 * loop finish the message in hand and stop.
 */
#include "runtime/cli.h"

#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char worker_usage[] =
    "usage: sluice worker QUEUE [options] -- COMMAND [ARG...]\n"
    "\n"
    "Runs COMMAND once per message of QUEUE with the payload on its standard\n"
    "input, and acknowledges the message when COMMAND exits 0; otherwise the\n"
    "message is rejected: back to the queue (until the queue's MAXDELIVERIES\n"
    "dead-letters it) or, with --no-requeue, to the dead-letter queue at once.\n"
    "COMMAND also gets SLUICE_QUEUE, SLUICE_TAG, SLUICE_DELIVERY_COUNT and\n"
    "SLUICE_PRIORITY in its environment. Stops on SIGINT or SIGTERM after the\n"
    "message in hand.\n"
    "\n"
    "  --concurrency N   run N workers in parallel (default 1)\n"
    "  --lease MS        lease each message for MS (default: the queue's LEASE)\n"
    "  --no-requeue      dead-letter a failed message instead of retrying it\n"
    "  --max-messages N  stop after N messages (per worker)\n"
    "  --exit-when-empty stop when the queue has nothing ready\n"
    "  --quiet           no line per message on stderr\n" CLI_SERVER_USAGE;

typedef struct worker {
    cli_server_t server;
    const char *queue;
    char **command;
    int64_t concurrency, lease_ms, max_messages;
    int no_requeue, exit_when_empty, quiet;
    int64_t acked, rejected;
    redisContext *c;
} worker_t;

static volatile sig_atomic_t stopping;

static void on_stop(int signal_number)
{
    (void)signal_number;
    stopping = 1;
}

static int set_number(int opt, const char *value, worker_t *w)
{
    int64_t *into = opt == 'c' ? &w->concurrency : opt == 'l' ? &w->lease_ms : &w->max_messages;
    if (cli_parse_int(value, into) || *into < 1)
        return cli_usage_error("worker", "worker", "that option needs a positive number");
    return 0;
}

static int parse_worker(int argc, char **argv, worker_t *w)
{
    static const struct option options[] = {
        CLI_SERVER_OPTIONS{"concurrency", required_argument, NULL, 'c'},
        {"lease", required_argument, NULL, 'l'},
        {"max-messages", required_argument, NULL, 'm'},
        {"no-requeue", no_argument, NULL, 'r'},
        {"exit-when-empty", no_argument, NULL, 'e'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    int c, rc = 0;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":", options, NULL)) != -1) {
        int server = cli_server_option(&w->server, c, optarg);
        if (c == 'h')
            return fputs(worker_usage, stdout), 1;
        if (c == '?' || c == ':')
            return cli_option_error("worker", "worker", c, argv);
        if (server < 0)
            return cli_usage_error("worker", "worker", "--port needs a number from 1 to 65535");
        if (server == 0 && (c == 'r' || c == 'e' || c == 'q')) {
            w->no_requeue |= c == 'r';
            w->exit_when_empty |= c == 'e';
            w->quiet |= c == 'q';
        } else if (server == 0) {
            rc = set_number(c, optarg, w);
        }
    }
    if (rc)
        return rc;
    /* getopt stopped at "--" and moved QUEUE before it: QUEUE COMMAND... */
    if (optind >= argc)
        return cli_usage_error("worker", "worker", "which queue?");
    w->queue = argv[optind++];
    if (optind >= argc)
        return cli_usage_error("worker", "worker",
                               "which command? (sluice worker QUEUE -- "
                               "COMMAND [ARG...])");
    w->command = argv + optind;
    return 0;
}

/* ---- one message ------------------------------------------------------------ */

/* The child: payload on stdin from the pipe, message facts in the
 * environment, then COMMAND. */
static void run_child(const worker_t *w, int input, const redisReply *d)
{
    char number[32];
    dup2(input, STDIN_FILENO);
    close(input);
    setenv("SLUICE_QUEUE", w->queue, 1);
    snprintf(number, sizeof number, "%lld", d->element[0]->integer);
    setenv("SLUICE_TAG", number, 1);
    snprintf(number, sizeof number, "%lld", d->element[2]->integer);
    setenv("SLUICE_DELIVERY_COUNT", number, 1);
    snprintf(number, sizeof number, "%lld", d->element[3]->integer);
    setenv("SLUICE_PRIORITY", number, 1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execvp(w->command[0], w->command);
    fprintf(stderr, "sluice: worker: cannot run %s: %s\n", w->command[0], strerror(errno));
    _exit(127);
}

/* Writes the whole payload (a command that stops reading just ends it). */
static void feed(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        data += n;
        len -= (size_t)n;
    }
    close(fd);
}

/* Runs COMMAND for delivery d; returns its exit status (128 + signal if a
 * signal ended it, 127 if it could not run). */
static int run_command(const worker_t *w, const redisReply *d)
{
    int fds[2], status = 0;
    if (pipe(fds))
        return fprintf(stderr, "sluice: worker: pipe: %s\n", strerror(errno)), 127;
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        close(fds[0]);
        close(fds[1]);
        return fprintf(stderr, "sluice: worker: fork: %s\n", strerror(errno)), 127;
    }
    if (child == 0) {
        close(fds[1]);
        run_child(w, fds[0], d);
    }
    close(fds[0]);
    feed(fds[1], d->element[1]->str, d->element[1]->len);
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* ACK queue tag, or NACK queue tag [REQUEUE]. */
static int settle(worker_t *w, long long tag, int ok)
{
    char text[32];
    const char *argv[4] = {ok ? "ACK" : "NACK", w->queue, text, "REQUEUE"};
    snprintf(text, sizeof text, "%lld", tag);
    int argc = ok || w->no_requeue ? 3 : 4;
    redisReply *r = cli_run(w->c, "worker", argc, argv, NULL);
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        fprintf(stderr,
                "sluice: worker: message %lld was no longer ours (its lease ran out); "
                "it is delivered again\n",
                tag);
    freeReplyObject(r);
    return 0;
}

/* Handles one delivery: run, then ACK or NACK. */
static int handle(worker_t *w, const redisReply *d)
{
    int status = run_command(w, d);
    if (!w->quiet)
        fprintf(stderr, "worker: message %lld (delivery %lld): %s %d, %s\n", d->element[0]->integer,
                d->element[2]->integer, status > 128 ? "signal" : "exit",
                status > 128 ? status - 128 : status,
                status == 0     ? "acked"
                : w->no_requeue ? "dead-lettered"
                                : "requeued");
    w->acked += status == 0;
    w->rejected += status != 0;
    return settle(w, d->element[0]->integer, status == 0);
}

static int is_delivery(const redisReply *d)
{
    return cli_reply_is_array(d, 5) && d->element[0]->type == REDIS_REPLY_INTEGER &&
           d->element[1]->type == REDIS_REPLY_STRING &&
           d->element[2]->type == REDIS_REPLY_INTEGER && d->element[3]->type == REDIS_REPLY_INTEGER;
}

/* QPOP queue BLOCK 1000 [LEASE ms]: one delivery at most. Returns 1 if one
 * was handled, 0 if none was ready, -1 on failure. */
static int take_one(worker_t *w)
{
    char lease[32];
    const char *argv[6] = {"QPOP",  w->queue, "BLOCK", w->exit_when_empty ? "1" : "1000",
                           "LEASE", lease};
    snprintf(lease, sizeof lease, "%lld", (long long)w->lease_ms);
    redisReply *r = cli_run(w->c, "worker", w->lease_ms > 0 ? 6 : 4, argv, NULL);
    if (!r)
        return -1;
    int rc = r->type != REDIS_REPLY_ARRAY ? (cli_unexpected_reply("worker"), -1) : 0;
    if (rc == 0 && r->elements == 1)
        rc = is_delivery(r->element[0]) ? (handle(w, r->element[0]) ? -1 : 1)
                                        : (cli_unexpected_reply("worker"), -1);
    freeReplyObject(r);
    return rc;
}

/* One worker's loop, on its own connection. Returns the exit status. */
static int work(worker_t *w)
{
    int64_t handled = 0;
    int rc = 0;
    if (!(w->c = cli_connect(&w->server)))
        return 1;
    while (!stopping && (!w->max_messages || handled < w->max_messages)) {
        rc = take_one(w);
        if (rc < 0 || (rc == 0 && w->exit_when_empty))
            break;
        handled += rc;
    }
    redisFree(w->c);
    if (!w->quiet)
        fprintf(stderr, "worker: %lld acked, %lld rejected\n", (long long)w->acked,
                (long long)w->rejected);
    return rc < 0 ? 1 : 0;
}

/* Runs concurrency - 1 workers in child processes and one here; the exit
 * status is 1 if any failed. */
static int work_all(worker_t *w)
{
    pid_t children[256];
    int n = 0, failed = 0, status;
    for (int64_t i = 1; i < w->concurrency && n < 256; i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0)
            _exit(work(w));
        if (pid > 0)
            children[n++] = pid;
        else
            failed = fprintf(stderr, "sluice: worker: fork: %s\n", strerror(errno)) > 0;
    }
    failed |= work(w);
    for (int i = 0; i < n; i++) {
        while (waitpid(children[i], &status, 0) < 0 && errno == EINTR)
            ;
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    return failed ? 1 : 0;
}

int cli_worker(int argc, char **argv)
{
    worker_t w = {.concurrency = 1};
    cli_server_init(&w.server);
    int rc = parse_worker(argc, argv, &w);
    if (rc)
        return rc == 1 ? 0 : rc;
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return work_all(&w);
}
