/*
 * resp.h - the RESP2 request parser: bytes from a client socket in,
 * commands (argument vectors) out. Zero-copy, incremental, hardened.
 *
 * A client sends requests in either of the two forms Redis accepts:
 *
 *   multibulk   *<count>\r\n  then <count> times  $<length>\r\n<bytes>\r\n
 *   inline      words separated by blanks, ending in \n or \r\n
 *
 * and may pipeline any number of them back to back. The server keeps the
 * bytes it has received but not yet consumed in one buffer and calls
 * sl_resp_parse() on it; each successful call returns exactly one command
 * and says how many bytes it took:
 *
 *     sl_resp_parser_t p;
 *     sl_resp_parser_init(&p, NULL);
 *     ... on every read from the socket, with buf/len the unconsumed bytes:
 *     for (;;) {
 *         size_t used;
 *         int rc = sl_resp_parse(&p, buf, len, &used);
 *         if (rc == SL_RESP_INCOMPLETE)
 *             break;                  // read more; p.need says how much
 *         if (rc < 0)
 *             reply "-ERR <p.error>" and close the connection;
 *         if (p.argc > 0)
 *             execute p.argv[0 .. p.argc);
 *         buf += used, len -= used;   // or memmove the rest to the front
 *     }
 *     sl_resp_parser_free(&p);
 *
 * Zero copy: the arguments point into the caller's buffer wherever they can
 * (every multibulk argument, and every inline word without quotes). Inline
 * words that use quotes or escapes are decoded into a scratch buffer the
 * parser owns. Either way an argument is valid until the next call on the
 * parser (parse, reset or free) and, when it points into buf, until the
 * caller discards or moves those bytes.
 *
 * Incremental: when a command is not complete, the parser remembers how far
 * it got, so a command that arrives in many pieces is scanned once in total
 * rather than once per piece. Hence the one rule of the interface: between
 * an INCOMPLETE result and the call that returns the command (or an error),
 * buf must hold the same bytes from the same first byte, possibly with more
 * bytes appended. The buffer may move in memory between calls (realloc is
 * fine); offsets, not pointers, are kept. A call with fewer bytes than the
 * previous one saw starts the command over from buf[0].
 *
 * Hardened: the parser never reads outside buf[0 .. len), never trusts a
 * declared count or length for allocation (memory grows with the arguments
 * that actually arrive, never with the number a client announces), rejects
 * numbers that are not canonical decimals (no '+', no leading zeros, no
 * overflow), and enforces the limits below. Malformed framing is reported as
 * SL_RESP_PROTOCOL_ERROR with a sentence in p->error; RESP framing cannot be
 * resynchronised after that, so the server replies and closes.
 *
 * Threads: a parser belongs to one connection and is used by one thread at a
 * time; distinct parsers share nothing.
 */
#ifndef SL_RESP_H
#define SL_RESP_H

#include <errno.h>
#include <stddef.h>

#include "storage/storage.h"

/* ---- results ---------------------------------------------------------- */

/*
 * sl_resp_parse() results. The two failures follow the project's
 * convention, so sl_strerror() names them; p->error says what exactly was
 * wrong with the request.
 */
#define SL_RESP_COMMAND        1           /* one command parsed (argc may be 0) */
#define SL_RESP_INCOMPLETE     0           /* need more bytes; see p->need */
#define SL_RESP_PROTOCOL_ERROR SL_EINVALID /* malformed request; see p->error */
#define SL_RESP_NOMEM          (-ENOMEM)   /* the allocator failed; nothing lost */

/* ---- limits ----------------------------------------------------------- */

#define SL_RESP_DEFAULT_MAX_ARGS   ((size_t)1024 * 1024)       /* as Redis */
#define SL_RESP_DEFAULT_MAX_BULK   ((size_t)512 * 1024 * 1024) /* proto-max-bulk-len */
#define SL_RESP_DEFAULT_MAX_INLINE ((size_t)64 * 1024)         /* PROTO_INLINE_MAX_SIZE */

/* Per-connection limits. A field left 0 takes its default above. */
typedef struct sl_resp_limits {
    size_t max_args;   /* arguments in one command, either form */
    size_t max_bulk;   /* bytes in one multibulk argument */
    size_t max_inline; /* bytes in one inline line, without its \r\n */
} sl_resp_limits_t;

/* ---- the parser ------------------------------------------------------- */

/* One argument: len bytes at data, not NUL-terminated, binary-safe. */
typedef struct sl_resp_arg {
    const char *data;
    size_t len;
} sl_resp_arg_t;

/*
 * A parser. The public fields are read-only for the caller; the rest is
 * private. The structure may live anywhere (it is usually embedded in the
 * connection); sl_resp_parser_init() prepares it without allocating.
 */
typedef struct sl_resp_parser {
    sl_resp_limits_t limits; /* in force, defaults filled in */
    sl_resp_arg_t *argv;     /* after SL_RESP_COMMAND: argv[0 .. argc) */
    size_t argc;
    size_t argv_cap; /* entries allocated; grows by doubling, reused */
    /* After SL_RESP_INCOMPLETE: the total length buf must reach before a
     * call can make progress, or 0 when unknown (call again when any byte
     * arrives). Known inside a bulk argument, so a server can read a large
     * value straight through instead of calling once per read. It is
     * declared by the client: grow the buffer towards it, do not trust it
     * for more than max_bulk. Never more than the whole command's length. */
    size_t need;
    char error[128]; /* after SL_RESP_PROTOCOL_ERROR or NOMEM: why; no CR/LF */

    /* private: where the command being parsed stands (see resp.c) */
    int state;        /* START, COUNT, HEADER, BULK or LINE */
    size_t pos;       /* bytes of buf already parsed (LINE: searched) */
    size_t args_left; /* multibulk: arguments declared but not complete */
    size_t bulk_len;  /* BULK: length of the argument at pos */
    char *scratch;    /* decoded quoted inline words */
    size_t scratch_cap;
} sl_resp_parser_t;

/* Prepares p with the given limits (NULL, or fields left 0, for the
 * defaults). Allocates nothing; cannot fail. */
void sl_resp_parser_init(sl_resp_parser_t *p, const sl_resp_limits_t *limits);

/*
 * Parses the first command in buf[0 .. len), the bytes received and not yet
 * consumed. buf may be NULL when len is 0. Returns:
 *
 *   SL_RESP_COMMAND         *consumed (> 0) bytes form one command, whose
 *                           arguments are p->argv[0 .. p->argc). argc is 0
 *                           for the requests Redis ignores (an empty or
 *                           blank inline line, `*0`, `*-1`): consume them
 *                           and carry on. Remove the consumed bytes (or
 *                           advance buf) before the next call.
 *   SL_RESP_INCOMPLETE      no complete command yet; *consumed is 0 and
 *                           p->need is set as described above. Call again,
 *                           with the same bytes plus more, when more arrive.
 *   SL_RESP_PROTOCOL_ERROR  the request is malformed or over a limit;
 *                           p->error holds a sentence starting "Protocol
 *                           error: " fit for a `-ERR` reply. *consumed is 0.
 *                           The parser is ready for a fresh stream.
 *   SL_RESP_NOMEM           growing argv or the scratch buffer failed.
 *                           *consumed is 0; the parser keeps its progress,
 *                           so the same call may be retried later.
 *
 * The arguments are valid until the next call on p and, for those pointing
 * into buf, while the caller keeps those bytes where they are.
 */
int sl_resp_parse(sl_resp_parser_t *p, const char *buf, size_t len, size_t *consumed);

/* Forgets any partly parsed command, e.g. when the connection's buffer is
 * discarded. Keeps the allocated memory for reuse. */
void sl_resp_parser_reset(sl_resp_parser_t *p);

/* Frees argv and the scratch buffer. p may then be initialised again. */
void sl_resp_parser_free(sl_resp_parser_t *p);

#endif
