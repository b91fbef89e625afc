/*
 * cmd_exchange.c - routing declarations: EXCHANGE DECLARE | DELETE | LIST,
 * BIND and UNBIND.
 */
#include "queries/server.h"

#include <string.h>

/* The reply for a failed declaration: NOTFOUND, BUSY or ERR. */
int sl_queue_error(sl_request_t *req, int rc)
{
    const char *prefix = rc == SL_ENOTFOUND ? "NOTFOUND " : rc == SL_EEXISTS ? "BUSY " : "";
    return sl_request_error(req, "%s%s", prefix, sl_error_detail());
}

/* Copies a queue or exchange name argument; an error reply if it is too
 * long (the registry checks its characters). */
int sl_queue_name_arg(sl_request_t *req, const sl_resp_arg_t *a, const char *kind, char *out)
{
    if (sl_arg_name(a, out, SL_QUEUE_NAME_MAX + 1) == 0)
        return 0;
    sl_request_error(req, "%s name too long (at most %d bytes)", kind, SL_QUEUE_NAME_MAX);
    return -1;
}

static int reply_ok(sl_request_t *req, int rc)
{
    if (rc)
        return sl_queue_error(req, rc);
    sl_reply_simple(&req->reply, "OK");
    return SL_DONE;
}

static int exchange_declare(sl_request_t *req, sl_queues_t *qs, const char *name)
{
    sl_exchange_type_t type;
    if (req->argc != 4)
        return sl_request_error(req, "syntax error: EXCHANGE DECLARE name "
                                     "direct|topic|fanout|headers");
    if (sl_exchange_type_parse(req->argv[3].data, req->argv[3].len, &type))
        return sl_request_error(req, "%s", sl_error_detail());
    return reply_ok(req, sl_queues_declare_exchange(qs, name, type));
}

typedef struct listing {
    sl_reply_t reply; /* into the server's scratch buffer */
    size_t count;
} listing_t;

static int list_exchange(void *arg, const char *name, sl_exchange_type_t type, int64_t unroutable)
{
    listing_t *l = arg;
    (void)unroutable;
    if (!name[0])
        return 0; /* the default exchange is always there */
    sl_reply_array(&l->reply, 2);
    sl_reply_cstr(&l->reply, name);
    sl_reply_cstr(&l->reply, sl_exchange_type_name(type));
    l->count++;
    return 0;
}

/* EXCHANGE LIST -> [[name, type], ...] */
static int exchange_list(sl_request_t *req, sl_queues_t *qs)
{
    listing_t l = {{req->server->scratch, req->conn->resp3}, 0};
    evbuffer_drain(l.reply.out, evbuffer_get_length(l.reply.out));
    sl_queues_foreach_exchange(qs, list_exchange, &l);
    sl_reply_array(&req->reply, l.count);
    evbuffer_add_buffer(req->reply.out, l.reply.out);
    return SL_DONE;
}

/* EXCHANGE DECLARE name type | EXCHANGE DELETE name | EXCHANGE LIST */
int sl_cmd_exchange(sl_request_t *req)
{
    char name[SL_QUEUE_NAME_MAX + 1];
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs)
        return SL_DONE;
    if (sl_arg_is(&req->argv[1], "LIST") && req->argc == 2)
        return exchange_list(req, qs);
    if (req->argc < 3)
        return sl_request_error(req, "syntax error: EXCHANGE DECLARE name type | EXCHANGE DELETE "
                                     "name | EXCHANGE LIST");
    if (sl_queue_name_arg(req, &req->argv[2], "exchange", name))
        return SL_DONE;
    if (sl_arg_is(&req->argv[1], "DECLARE"))
        return exchange_declare(req, qs, name);
    if (sl_arg_is(&req->argv[1], "DELETE") && req->argc == 3)
        return reply_ok(req, sl_queues_delete_exchange(qs, name));
    return sl_request_error(req, "syntax error: EXCHANGE DECLARE name type | EXCHANGE DELETE "
                                 "name | EXCHANGE LIST");
}

#define MAX_ARGS 64

/* Parses [ARG name value]... from argv[4] on into args. */
static int binding_args(sl_request_t *req, sl_header_t *args, size_t *nargs)
{
    *nargs = 0;
    for (size_t i = 4; i < req->argc; i += 3) {
        if (!sl_arg_is(&req->argv[i], "ARG") || i + 2 >= req->argc || *nargs == MAX_ARGS)
            return -1;
        args[(*nargs)++] =
            (sl_header_t){(const uint8_t *)req->argv[i + 1].data, (int32_t)req->argv[i + 1].len,
                          (const uint8_t *)req->argv[i + 2].data, (int32_t)req->argv[i + 2].len};
    }
    return 0;
}

/* BIND exchange queue pattern [ARG name value]...
 * UNBIND exchange queue pattern [ARG name value]... -> OK */
int sl_cmd_bind(sl_request_t *req)
{
    char exchange[SL_QUEUE_NAME_MAX + 1], queue[SL_QUEUE_NAME_MAX + 1];
    sl_header_t args[MAX_ARGS];
    size_t nargs;
    int unbind = sl_arg_is(&req->argv[0], "UNBIND");
    sl_queues_t *qs = sl_qstage_queues(req);
    if (!qs)
        return SL_DONE;
    if (binding_args(req, args, &nargs))
        return sl_request_error(req,
                                "syntax error: %s exchange queue pattern [ARG name value]... "
                                "(up to %d ARGs)",
                                unbind ? "UNBIND" : "BIND", MAX_ARGS);
    if (sl_queue_name_arg(req, &req->argv[1], "exchange", exchange) ||
        sl_queue_name_arg(req, &req->argv[2], "queue", queue))
        return SL_DONE;
    const sl_resp_arg_t *pattern = &req->argv[3];
    int rc = unbind
                 ? sl_queues_unbind(qs, exchange, queue, pattern->data, pattern->len, args, nargs)
                 : sl_queues_bind(qs, exchange, queue, pattern->data, pattern->len, args, nargs);
    return reply_ok(req, rc);
}
