/*
 * server.c - the RESP server: listening, connections, the read-execute
 * loop, held replies and blocked commands (see server.h for the scheme).
 *
 * Everything here runs on the event loop's thread. The only entry from other
 * threads is sl_server_notify(), which just activates the `wake` event
 * (libevent is set up for threads), so all state stays single-threaded.
 */
#include "queries/server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <event2/thread.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t sl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t sl_now_ms(void)
{
    return sl_now_ns() / 1000000;
}

void sl_server_options_default(sl_server_options_t *o)
{
    *o = (sl_server_options_t){
        .bind = "127.0.0.1",
        .port = 6380,
        .http_port = 8080,
        .max_value_bytes = 1 << 20,
        .max_bulk_bytes = 512u << 20,
        .max_args = 1024 * 1024,
        .max_clients = 10000,
    };
}

/* ---- held replies ------------------------------------------------------ */

struct evbuffer *sl_conn_output(sl_conn_t *c)
{
    return c->holds_tail ? c->holds_tail->after : c->out;
}

/* Holds for one wait are pooled: a PRODUCE makes one per record, and
 * their two buffers are worth keeping. */
#define POOL_MAX 4096

static sl_hold_t *hold_new(sl_server_t *s, int waits)
{
    if (waits == 1 && s->hold_pool) {
        sl_hold_t *h = s->hold_pool;
        s->hold_pool = h->next;
        s->hold_pooled--;
        h->next = NULL;
        return h;
    }
    sl_hold_t *h = sl_calloc(1, sizeof *h + (size_t)waits * sizeof(sl_hold_wait_t));
    if (!h)
        return NULL;
    h->server = s;
    h->capacity = waits;
    h->reply = evbuffer_new();
    h->after = evbuffer_new();
    if (!h->reply || !h->after) {
        if (h->reply)
            evbuffer_free(h->reply);
        if (h->after)
            evbuffer_free(h->after);
        sl_free(h);
        return NULL;
    }
    return h;
}

sl_hold_t *sl_conn_hold(sl_conn_t *c, int waits)
{
    sl_hold_t *h = hold_new(c->server, waits);
    if (!h)
        return NULL;
    if (c->holds_tail)
        c->holds_tail->next = h;
    else
        c->holds = h;
    c->holds_tail = h;
    return h;
}

void sl_hold_add(sl_hold_t *h, sl_partition_t *p, int64_t end)
{
    assert(h->waits < h->capacity);
    sl_partition_ref(p);
    h->wait[h->waits++] = (sl_hold_wait_t){p, end};
}

void sl_free_hold(sl_hold_t *h)
{
    sl_server_t *s = h->server;
    for (int i = 0; i < h->waits; i++)
        sl_partition_unref(h->wait[i].partition);
    if (h->capacity == 1 && s->hold_pooled < POOL_MAX && !s->shutting_down) {
        evbuffer_drain(h->reply, evbuffer_get_length(h->reply));
        evbuffer_drain(h->after, evbuffer_get_length(h->after));
        h->waits = h->staged = h->orphaned = 0;
        h->next = s->hold_pool;
        s->hold_pool = h;
        s->hold_pooled++;
        return;
    }
    evbuffer_free(h->reply);
    evbuffer_free(h->after);
    sl_free(h);
}

/* 1 when every wait is durable, 0 if not yet, or the error that lost one
 * of them (then the reply becomes that error). */
static int hold_state(const sl_hold_t *h, int *error)
{
    *error = 0;
    if (h->staged)
        return 0;
    for (int i = 0; i < h->waits; i++) {
        int rc = sl_partition_await_durable(h->wait[i].partition, h->wait[i].end, 0);
        if (rc == SL_ETIMEDOUT)
            return 0;
        if (rc && !*error)
            *error = rc;
    }
    return 1;
}

/* Sends every hold at the head of the chain that is ready, in order. */
static void release_holds(sl_conn_t *c)
{
    struct evbuffer *out = c->out;
    int error;
    while (c->holds && hold_state(c->holds, &error)) {
        sl_hold_t *h = c->holds;
        if (error) {
            evbuffer_drain(h->reply, evbuffer_get_length(h->reply));
            sl_reply_t r = {h->reply, c->resp3};
            sl_reply_error(&r, "write failed, records not stored: %s", sl_strerror(error));
        }
        evbuffer_add_buffer(out, h->reply);
        evbuffer_add_buffer(out, h->after);
        c->holds = h->next;
        if (!c->holds)
            c->holds_tail = NULL;
        sl_free_hold(h);
    }
}

/* ---- connections --------------------------------------------------------- */

static void conn_free_unlinked(sl_conn_t *c)
{
    if (c->queue_client)
        sl_qstage_conn_closed(c); /* its deliveries go back to ready */
    while (c->holds) {
        sl_hold_t *h = c->holds;
        c->holds = h->next;
        if (h->staged)
            h->orphaned = 1; /* the stage flush frees it */
        else
            sl_free_hold(h);
    }
    if (c->block_timer)
        event_free(c->block_timer);
    sl_resp_parser_free(&c->parser);
    if (c->read_event)
        event_free(c->read_event);
    if (c->write_event)
        event_free(c->write_event);
    if (c->in)
        evbuffer_free(c->in);
    if (c->out)
        evbuffer_free(c->out);
    if (c->fd >= 0)
        evutil_closesocket(c->fd);
    sl_free(c);
}

static void conn_free(sl_conn_t *c)
{
    sl_server_t *s = c->server;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->conn_count--;
    conn_free_unlinked(c);
}

/* Frees a closing connection once nothing is left to send. Returns 1 if
 * the connection is gone. */
static int finish_if_done(sl_conn_t *c)
{
    if (!c->closing || c->holds || evbuffer_get_length(c->out))
        return 0;
    conn_free(c);
    return 1;
}

/* Reading pauses while a client leaves this much output unread. */
#define OUTPUT_HIGH_WATER (64 << 20)

static void set_reading(sl_conn_t *c, int on)
{
    if (on == c->reading)
        return;
    c->reading = on;
    if (on)
        event_add(c->read_event, NULL);
    else
        event_del(c->read_event);
}

/* Writes what it can now; waits for writability for the rest. Returns 1
 * if the connection was freed (error, or closing and done). */
static int flush_output(sl_conn_t *c)
{
    size_t pending = evbuffer_get_length(c->out);
    if (pending) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            conn_free(c);
            return 1;
        }
        pending = evbuffer_get_length(c->out);
        if (pending)
            event_add(c->write_event, NULL);
        else
            event_del(c->write_event);
    }
    set_reading(c, !c->closing && pending < OUTPUT_HIGH_WATER);
    return finish_if_done(c);
}

static const char *command_name(const sl_resp_arg_t *a, char *buf, size_t size)
{
    size_t n = a->len < size - 1 ? a->len : size - 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (a->data[i] >= 32 && a->data[i] < 127) ? a->data[i] : '?';
    buf[n] = 0;
    return buf;
}

/* Redis's arity rule: N means exactly N arguments (the name included),
 * -N at least N. */
static int arity_ok(int arity, size_t argc)
{
    return arity > 0 ? (int64_t)argc == arity : (int64_t)argc >= -arity;
}

static int check_command(sl_request_t *req, const sl_command_t *cmd)
{
    char name[64];
    sl_conn_t *c = req->conn;
    if (!cmd) {
        c->server->metrics.unknown_commands++;
        return sl_request_error(req, "unknown command '%s'",
                                command_name(&req->argv[0], name, sizeof name));
    }
    if (c->server->options.requirepass && !c->authenticated && !cmd->allowed_before_auth)
        return sl_request_error(req, "NOAUTH Authentication required.");
    if (!arity_ok(cmd->arity, req->argc))
        return sl_request_error(req, "wrong number of arguments for '%s' command", cmd->name);
    return -1;
}

int sl_server_add_command(sl_server_t *s, const char *name, int arity, sl_command_fn fn, void *arg)
{
    if (s->extra_count == 8 || strlen(name) >= sizeof s->extra[0].name ||
        sl_builtin_command_count() + s->extra_count >= SL_METRIC_COMMANDS)
        return sl_error_set(SL_EINVALID, "cannot add command %s", name);
    struct sl_extra_command *e = &s->extra[s->extra_count++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->arity = arity;
    e->fn = fn;
    e->arg = arg;
    return 0;
}

/* Runs an added command; -1 if argv[0] names none. */
static int run_extra(sl_request_t *req)
{
    sl_server_t *s = req->server;
    for (int i = 0; i < s->extra_count; i++) {
        struct sl_extra_command *e = &s->extra[i];
        if (!sl_arg_is(&req->argv[0], e->name))
            continue;
        int64_t started = sl_now_ns();
        if (s->options.requirepass && !req->conn->authenticated)
            sl_request_error(req, "NOAUTH Authentication required.");
        else if (!arity_ok(e->arity, req->argc))
            sl_request_error(req, "wrong number of arguments for '%s' command", e->name);
        else
            req->failed = e->fn(e->arg, req->argc, req->argv, &req->reply);
        sl_metrics_observe(&s->metrics, sl_builtin_command_count() + i, sl_now_ns() - started,
                           req->failed);
        return SL_DONE;
    }
    return -1;
}

/* Runs the command now in c->parser. */
static int execute(sl_conn_t *c, int retry)
{
    sl_server_t *s = c->server;
    sl_request_t req = {s,     c, {sl_conn_output(c), c->resp3}, c->parser.argc, c->parser.argv,
                        retry, 0};
    const sl_command_t *cmd = sl_command_find(&req.argv[0]);
    if (!cmd && run_extra(&req) == SL_DONE)
        return SL_DONE;
    int64_t started = sl_now_ns();
    int outcome = check_command(&req, cmd);
    if (outcome < 0)
        outcome = cmd->run(&req);
    if (outcome != SL_BLOCKED)
        sl_metrics_observe(&s->metrics, cmd ? cmd->metric : -1, sl_now_ns() - started, req.failed);
    return outcome;
}

static void protocol_error(sl_conn_t *c)
{
    sl_reply_t r = {sl_conn_output(c), c->resp3};
    sl_reply_error(&r, "%s", c->parser.error);
    c->server->metrics.protocol_errors++;
    c->closing = 1;
}

/* Parses and runs the commands waiting in the input, in order, until the
 * input runs dry, a command blocks, or the connection is to close. */
static void process_input(sl_conn_t *c)
{
    struct evbuffer *in = c->in;
    while (!c->closing && !c->blocked) {
        size_t len = evbuffer_get_length(in), consumed = 0;
        if (len == 0 || (c->parser.need && len < c->parser.need))
            break;
        const char *buf = (const char *)evbuffer_pullup(in, -1);
        int rc = sl_resp_parse(&c->parser, buf, len, &consumed);
        if (rc == SL_RESP_INCOMPLETE)
            break;
        if (rc < 0) {
            protocol_error(c);
            break;
        }
        int outcome = c->parser.argc ? execute(c, 0) : SL_DONE;
        if (outcome == SL_BLOCKED)
            break;
        evbuffer_drain(in, consumed);
        c->closing |= outcome == SL_CLOSE;
    }
}

/* Runs a blocked command again; continues with the input if it finished. */
static void retry_blocked(sl_conn_t *c)
{
    struct evbuffer *in = c->in;
    size_t len = evbuffer_get_length(in), consumed = 0;
    const char *buf = (const char *)evbuffer_pullup(in, -1);
    c->blocked = 0;
    if (sl_resp_parse(&c->parser, buf, len, &consumed) != SL_RESP_COMMAND)
        return; /* cannot happen: these bytes parsed before */
    int outcome = execute(c, 1);
    if (outcome == SL_BLOCKED)
        return;
    if (c->block_timer)
        event_del(c->block_timer);
    evbuffer_drain(in, consumed);
    c->closing |= outcome == SL_CLOSE;
    process_input(c);
}

void sl_conn_wake(sl_conn_t *c)
{
    if (c->blocked)
        retry_blocked(c);
    flush_output(c);
}

static void on_block_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    retry_blocked(arg);
    flush_output(arg);
}

void sl_conn_block(sl_conn_t *c, int64_t deadline_ms)
{
    c->blocked = 1;
    c->block_deadline_ms = deadline_ms;
    if (deadline_ms < 0)
        return;
    if (!c->block_timer)
        c->block_timer = evtimer_new(c->server->base, on_block_timeout, c);
    int64_t wait = deadline_ms - sl_now_ms();
    struct timeval tv = {wait > 0 ? wait / 1000 : 0, wait > 0 ? (wait % 1000) * 1000 : 0};
    if (c->block_timer)
        evtimer_add(c->block_timer, &tv);
}

/* One read() into the input buffer's free space (evbuffer_read would ask
 * the kernel how much is pending first: a syscall per read). */
static int read_some(struct evbuffer *in, evutil_socket_t fd)
{
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(in, 65536, &v, 1) < 1)
        return -1;
    ssize_t n = read(fd, v.iov_base, v.iov_len);
    v.iov_len = n > 0 ? (size_t)n : 0;
    evbuffer_commit_space(in, &v, 1);
    return (int)n;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    sl_conn_t *c = arg;
    (void)what;
    int n = read_some(c->in, fd);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_free(c); /* the client is gone: nothing more to say to it */
        return;
    }
    process_input(c);
    flush_output(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    flush_output(arg);
}

static void reject(evutil_socket_t fd, sl_server_t *s)
{
    static const char msg[] = "-ERR max number of clients reached\r\n";
    ssize_t ignored = send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL);
    (void)ignored;
    evutil_closesocket(fd);
    s->metrics.rejected_connections++;
}

static sl_conn_t *conn_new(sl_server_t *s, evutil_socket_t fd)
{
    sl_conn_t *c = sl_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    c->server = s;
    c->in = evbuffer_new();
    c->out = evbuffer_new();
    c->read_event = event_new(s->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    c->write_event = event_new(s->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    if (c->read_event)
        event_priority_set(c->read_event, 0);
    if (c->write_event)
        event_priority_set(c->write_event, 0);
    if (!c->in || !c->out || !c->read_event || !c->write_event) {
        c->fd = -1;
        conn_free_unlinked(c);
        return NULL;
    }
    sl_resp_limits_t limits = {s->options.max_args, s->options.max_bulk_bytes, 64 * 1024};
    sl_resp_parser_init(&c->parser, &limits);
    return c;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr, int len,
                      void *arg)
{
    sl_server_t *s = arg;
    (void)l;
    (void)addr;
    (void)len;
    sl_conn_t *c = s->conn_count < s->options.max_clients ? conn_new(s, fd) : NULL;
    if (!c)
        return reject(fd, s);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    evutil_make_socket_nonblocking(fd);
    c->id = ++s->next_conn_id;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->conn_count++;
    s->total_connections++;
    set_reading(c, 1);
}

static int outstanding_replies(const sl_server_t *s)
{
    for (const sl_conn_t *c = s->conns; c; c = c->next)
        if (c->holds)
            return 1;
    return 0;
}

void sl_server_release_all(sl_server_t *s)
{
    for (sl_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->holds) {
            release_holds(c);
            flush_output(c);
        }
    }
}

/* Something became durable or visible: release holds, retry blocked reads. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    sl_server_t *s = arg;
    (void)fd;
    (void)what;
    for (sl_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->holds)
            release_holds(c);
        if (c->blocked)
            retry_blocked(c);
        flush_output(c);
    }
    sl_qstage_serve(s); /* a pipeline's commit may have made queue messages ready */
    if (s->shutting_down && !outstanding_replies(s))
        event_base_loopexit(s->base, NULL);
}

void sl_server_notify(void *server, sl_partition_t *p, int64_t end_offset)
{
    sl_server_t *s = server;
    (void)p;
    (void)end_offset;
    if (s)
        event_active(s->wake, EV_READ, 0);
}

/* 1 if the resolved address is a loopback one (127.0.0.0/8 or ::1). */
static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return 0;
}

static int bound_port(evutil_socket_t fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static int listen_resp(sl_server_t *s)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", s->options.port);
    int rc = getaddrinfo(s->bind, port, &hints, &ai);
    if (rc)
        return sl_error_set(SL_EINVALID, "cannot resolve bind address %s: %s", s->bind,
                            gai_strerror(rc));
    if (!is_loopback(ai->ai_addr) && !s->options.requirepass) {
        freeaddrinfo(ai);
        return sl_error_set(SL_EINVALID,
                            "refusing to listen on %s without --requirepass (protected mode); "
                            "bind 127.0.0.1 or set a password",
                            s->bind);
    }
    s->listener =
        evconnlistener_new_bind(s->base, on_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                511, ai->ai_addr, (int)ai->ai_addrlen);
    freeaddrinfo(ai);
    if (!s->listener)
        return sl_error_set(-errno, "cannot listen on %s:%d: %s", s->bind, s->options.port,
                            strerror(errno));
    s->port = bound_port(evconnlistener_get_fd(s->listener));
    return 0;
}

int sl_server_start(struct event_base *base, sl_log_t *log, sl_state_t *state,
                    const sl_server_options_t *o, sl_server_t **out)
{
    sl_server_t *s = sl_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->base = base;
    s->log = log;
    s->state = state;
    s->options = *o;
    snprintf(s->bind, sizeof s->bind, "%s", o->bind);
    s->options.bind = s->bind;
    s->started_ms = sl_now_ms();
    s->http_port = -1;
    s->wake = event_new(base, -1, 0, on_wake, s);
    s->flush = event_new(base, -1, 0, sl_stage_flush, s);
    s->scratch = evbuffer_new();
    if (s->flush)
        event_priority_set(s->flush, 1); /* after this round's socket events */
    if (s->wake)
        event_priority_set(s->wake, 0);
    int rc = s->wake && s->flush && s->scratch ? listen_resp(s) : -ENOMEM;
    if (rc == 0 && o->http_port >= 0)
        rc = sl_http_start(s);
    if (rc) {
        sl_server_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

int sl_server_port(const sl_server_t *s)
{
    return s->port;
}

int sl_server_http_port(const sl_server_t *s)
{
    return s->http_port;
}

static void on_shutdown_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(((sl_server_t *)arg)->base, NULL);
}

void sl_server_shutdown(sl_server_t *s, int timeout_ms)
{
    if (s->listener)
        evconnlistener_disable(s->listener);
    s->shutting_down = 1;
    for (sl_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->blocked) {
            c->block_deadline_ms = 0; /* answer now, as at the deadline */
            retry_blocked(c);
            flush_output(c);
        }
    }
    if (!outstanding_replies(s)) {
        event_base_loopexit(s->base, NULL);
        return;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    s->shutdown_timer = evtimer_new(s->base, on_shutdown_timeout, s);
    if (s->shutdown_timer)
        evtimer_add(s->shutdown_timer, &tv);
    else
        event_base_loopexit(s->base, NULL);
}

void sl_server_free(sl_server_t *s)
{
    if (!s)
        return;
    while (s->conns)
        conn_free(s->conns);
    if (s->listener)
        evconnlistener_free(s->listener);
    if (s->http)
        evhttp_free(s->http);
    if (s->wake)
        event_free(s->wake);
    if (s->shutdown_timer)
        event_free(s->shutdown_timer);
    if (s->scratch)
        evbuffer_free(s->scratch);
    if (s->flush) {
        sl_stage_flush(-1, 0, s); /* appends what is staged; replies go nowhere */
        event_free(s->flush);
    }
    sl_stage_free(s->stage);
    sl_qstage_free(s);
    s->shutting_down = 1; /* no more pooling */
    while (s->hold_pool) {
        sl_hold_t *h = s->hold_pool;
        s->hold_pool = h->next;
        sl_free_hold(h);
    }
    sl_groups_free(s->groups);
    sl_open_stores_free(s->stores);
    sl_feature_reads_free(s->feature_reads);
    sl_free(s);
}

void sl_server_set_feature_views(sl_server_t *s, const sl_feature_views_t *v, void *arg)
{
    s->features = v;
    s->features_arg = arg;
}

void sl_server_set_store_renderer(sl_server_t *s, const sl_store_renderer_t *r, void *arg)
{
    s->renderer = r;
    s->renderer_arg = arg;
}
