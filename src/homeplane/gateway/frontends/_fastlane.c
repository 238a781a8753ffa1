/* The HTTP/1.1 fast lane: plain proxied requests, end to end in C.
 *
 * Why C: a pure-Python proxy on uvloop costs about nginx's CPU per request before it does any
 * work of its own (bench/gateway.py measures that floor). This module does the common case -- a
 * request without a body to a route without filters or policies -- with no Python code on the
 * way: strict parse, route lookup in tables the Python side compiled, endpoint from the
 * cluster, pooled upstream connection, response relayed with its framing checked.
 *
 * Everything else is handed to the full Python implementation (gateway/http1.py) on the same
 * connection, before the first byte of that request is acted on: the parser here never answers
 * 400; it only says "simple" or "not for me". A connection handed over stays with Python.
 *
 * Objects shared with Python: the PortServer (its ``fast`` attribute is the current table,
 * read per request, so a Snapshot swap applies to the next request), Cluster and
 * EndpointState (in-flight counts, balancer, passive health, the ``fast_idle`` pool), and a
 * hooks object (gateway/fastlane.py) for the rare paths: hand-over, connecting, access log.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include "tls.h"

#define MAX_HEAD (60 * 1024)      /* Envoy's max_request_headers_kb */
#define MAX_HEADERS 100
#define MAX_URL (16 * 1024)
#define MAX_RESPONSE_HEAD (80 * 1024)
#define MAX_PIPELINED (1024 * 1024)
#define MAX_FIELDS 256
#define MAX_REPLAY (64 * 1024)  /* request bodies up to this size are kept for a retry */

/* The route record fastlane.FastRoute (a NamedTuple, read by position) and the match kinds of
 * routing.router: exported to Python (ROUTE_FIELDS, MATCH_*) and compared by the tests. */
enum {
    ROUTE_ID, ROUTE_CLUSTER, ROUTE_TIMEOUT, ROUTE_BACKEND_TIMEOUT, ROUTE_CONNECT_TIMEOUT, ROUTE_MAX_REQUESTS,
    ROUTE_PASSIVE, ROUTE_CONF, ROUTE_COMPRESSION, ROUTE_RETRIES, ROUTE_BACKOFF, ROUTE_GATEWAY, ROUTE_ALT_SVC, ROUTE_FIELDS
};
enum { MATCH_EXACT = 0, MATCH_PREFIX = 1, MATCH_OPAQUE = 2 };

/* ---- small helpers ---------------------------------------------------------------------- */

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *d = PyMem_Realloc(b->data, cap);
    if (!d) { PyErr_NoMemory(); return -1; }
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_add(Buf *b, const char *p, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static inline int buf_cstr(Buf *b, const char *s) { return buf_add(b, s, (Py_ssize_t)strlen(s)); }
/* string literals: length known at compile time */
#define buf_str(b, lit) buf_add((b), "" lit, (Py_ssize_t)sizeof(lit) - 1)

static void buf_consume(Buf *b, Py_ssize_t n) {
    if (n >= b->len) { b->len = 0; return; }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void buf_free(Buf *b) {
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static inline int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static int ieq_n(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn) {
    if (an != bn) return 0;
    for (Py_ssize_t i = 0; i < an; i++)
        if (lower((unsigned char)a[i]) != b[i]) return 0;
    return 1;
}
/* case-insensitive comparison with a lower-case literal */
#define ieq(a, an, lit) ieq_n((a), (an), "" lit, (Py_ssize_t)sizeof(lit) - 1)

/* RFC 9110 token characters */
static unsigned char TCHAR[256];

static void init_tchar(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = '0'; c <= '9'; c++) TCHAR[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) TCHAR[c] = 1;
    for (int c = 'A'; c <= 'Z'; c++) TCHAR[c] = 1;
    for (const char *p = extra; *p; p++) TCHAR[(unsigned char)*p] = 1;
}

/* Bytes a path may hold as they are, and bytes of a valid Host value: the same sets as
 * gateway/paths.py (_PATH_SAFE) and router.valid_host; exported as PATH_SAFE and HOST_SAFE and
 * compared with the Python side by the tests. */
static const char PATH_SAFE_CHARS[] =
    "!$%&'()*+,-./0123456789:;=?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~";
static const char HOST_SAFE_CHARS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%:";
static unsigned char PATH_SAFE[256], HOST_SAFE[256];

static void init_sets(void) {
    for (const char *p = PATH_SAFE_CHARS; *p; p++) PATH_SAFE[(unsigned char)*p] = 1;
    for (const char *p = HOST_SAFE_CHARS; *p; p++) HOST_SAFE[(unsigned char)*p] = 1;
}

/* gateway/paths.is_canonical: a path normalisation would leave as it is under any settings
 * (no escapes, backslashes, empty or dot segments, path parameters, only safe bytes). Others go
 * to Python. */
static int path_is_canonical(const char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!PATH_SAFE[c] || c == '%' || c == ';') return 0;
        if (c == '/' && i + 1 < n) {
            if (p[i + 1] == '/') return 0;
            if (p[i + 1] == '.') {
                Py_ssize_t j = i + 2;
                if (j == n || p[j] == '/' || p[j] == ';' ||
                    (p[j] == '.' && (j + 1 == n || p[j + 1] == '/' || p[j + 1] == ';')))
                    return 0;
            }
        }
    }
    return 1;
}

static const char *find_crlfcrlf(const char *p, Py_ssize_t n) {
    if (n < 4) return NULL;
    const char *end = p + n - 3;
    while (p < end) {
        const char *r = memchr(p, '\r', end - p);
        if (!r) return NULL;
        if (r[1] == '\n' && r[2] == '\r' && r[3] == '\n') return r;
        p = r + 1;
    }
    return NULL;
}

/* Does a comma-separated header value contain the token (case-insensitive)? */
static int has_token(const char *v, Py_ssize_t n, const char *tok) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        Py_ssize_t s = i;
        while (i < n && v[i] != ',') i++;
        Py_ssize_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e > s && ieq_n(v + s, e - s, tok, (Py_ssize_t)strlen(tok))) return 1;
    }
    return 0;
}

#define LIT(s) {s, sizeof(s) - 1}
static const struct { const char *name; Py_ssize_t len; } HOP[] = {
    LIT("connection"), LIT("keep-alive"), LIT("proxy-connection"), LIT("transfer-encoding"), LIT("te"), LIT("trailer"),
    LIT("upgrade"), {NULL, 0},
};

typedef struct {
    const char *name; Py_ssize_t nlen;
    const char *value; Py_ssize_t vlen;
} Field;

/* Parse header lines between p and end (end points at the CRLF of the empty line's start,
 * i.e. the head is p..end+2). Returns the number of fields, -1 when not plainly valid. */
static int parse_fields(const char *p, const char *end, Field *out, int max, int strict) {
    int n = 0;
    while (p < end) {
        /* p is at the start of a line (after the previous CRLF) */
        const char *eol = memchr(p, '\r', end + 2 - p);
        if (!eol || eol[1] != '\n') return -1;
        if (memchr(p, '\n', eol - p)) return -1;        /* bare LF */
        if (*p == ' ' || *p == '\t') return -1;          /* obs-fold */
        const char *c = p;
        while (c < eol && TCHAR[(unsigned char)*c]) c++;
        if (c == p || c >= eol || *c != ':') return -1;  /* empty name, bad char, space before colon */
        if (n >= max) return -1;
        out[n].name = p;
        out[n].nlen = c - p;
        const char *v = c + 1;
        while (v < eol && (*v == ' ' || *v == '\t')) v++;
        const char *ve = eol;
        for (const char *q = v; q < ve; q++) {
            unsigned char ch = (unsigned char)*q;
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -1;
        }
        if (strict && ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) return -1;  /* trailing OWS: let llhttp decide */
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        out[n].value = v;
        out[n].vlen = ve - v;
        n++;
        p = eol + 2;
    }
    return n;
}

static int is_hop(const Field *f, const Field *conn, int nconn) {
    for (int h = 0; HOP[h].name; h++)
        if (ieq_n(f->name, f->nlen, HOP[h].name, HOP[h].len)) return 1;
    for (int i = 0; i < nconn; i++) {
        /* tokens named in Connection are hop-by-hop too */
        const char *v = conn[i].value;
        Py_ssize_t n = conn[i].vlen, j = 0;
        while (j < n) {
            while (j < n && (v[j] == ' ' || v[j] == '\t' || v[j] == ',')) j++;
            Py_ssize_t s = j;
            while (j < n && v[j] != ',') j++;
            Py_ssize_t e = j;
            while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
            if (e - s == f->nlen) {
                Py_ssize_t k = 0;
                while (k < f->nlen && lower((unsigned char)v[s + k]) == lower((unsigned char)f->name[k])) k++;
                if (k == f->nlen) return 1;
            }
        }
    }
    return 0;
}

static int add_lower(Buf *b, const char *p, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    char *d = b->data + b->len;
    for (Py_ssize_t i = 0; i < n; i++) d[i] = (char)lower((unsigned char)p[i]);
    b->len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static int add_hex(Buf *b, unsigned long long v) {
    char tmp[24];
    int i = 24;
    do { tmp[--i] = HEX[v & 15]; v >>= 4; } while (v);
    return buf_add(b, tmp + i, 24 - i);
}

static int add_dec(Buf *b, long long v) {
    char tmp[24];
    int i = 24;
    unsigned long long u = v < 0 ? 0 : (unsigned long long)v;
    do { tmp[--i] = (char)('0' + u % 10); u /= 10; } while (u);
    return buf_add(b, tmp + i, 24 - i);
}

/* ---- request ids (x-request-id): version-4 UUID shape, as gateway/headers.py makes them -- */

static char id_prefix[25];
static unsigned long long id_n;
static int id_left;

static void id_block(void) {
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        for (int i = 0; i < 16; i++) r[i] = (unsigned char)(rand() & 0xff);
    }
    char h[33];
    for (int i = 0; i < 16; i++) snprintf(h + 2 * i, 3, "%02x", r[i]);
    const char *variant = "89ab";
    snprintf(id_prefix, sizeof id_prefix, "%.8s-%.4s-4%.3s-%c%.3s-", h, h + 8, h + 13, variant[r[8] & 3], h + 17);
    id_n = strtoull(h + 20, NULL, 16);
    id_left = 4096;
}

static int add_request_id(Buf *b) {
    if (id_left == 0) id_block();
    id_left--;
    id_n = (id_n + 1) & 0xFFFFFFFFFFFFULL;
    char tmp[36];
    memcpy(tmp, id_prefix, 24);
    unsigned long long v = id_n;
    for (int i = 35; i >= 24; i--) { tmp[i] = HEX[v & 15]; v >>= 4; }
    return buf_add(b, tmp, 36);
}

/* ---- interned names ------------------------------------------------------------------- */

static PyObject *s_write, *s_close, *s_abort, *s_pause_reading, *s_resume_reading, *s_active, *s_endpoints,
    *s_all_available, *s_pick, *s_fast_idle, *s_result, *s_fast, *s_handoff, *s_connect, *s_access_log,
    *s_idle_timeout, *s_headers_timeout, *s_cancel;
static PyObject *REASONS;  /* tuple: status -> reason bytes, 0..599 */
static unsigned long long served;

static PyObject *reason_of(int status) {
    if (REASONS && status >= 0 && status < PyTuple_GET_SIZE(REASONS)) return PyTuple_GET_ITEM(REASONS, status);
    return NULL;
}

/* ---- types ------------------------------------------------------------------------------ */

typedef struct Conn Conn;

typedef struct {
    PyObject_HEAD
    PyObject *endpoint;
    PyObject *transport;
    PyObject *write;
    Conn *owner;
    Buf in;
    int closed, reused, head_only, paused;
    double idle_since;
    /* response parsing */
    int phase, status, keep_alive, got_bytes, client_chunked;
    long long remaining;
} Up;

enum { PH_HEAD, PH_BODY_CL, PH_CHUNK_SIZE, PH_CHUNK_DATA, PH_CHUNK_CRLF, PH_TRAILER, PH_EOF, PH_DONE };

enum { ST_IDLE, ST_CONNECTING, ST_WAITING, ST_STREAMING, ST_CLOSED, ST_HANDED };

struct Conn {
    PyObject_HEAD
    PyObject *server, *hooks, *transport, *write, *client_ip, *sni, *scheme;
    PyObject *override;  /* the client's (ip, port) from a PROXY protocol header, or None */
    Buf in;
    Buf out;
    int state, close_after, head_only, retried, write_paused, read_paused, started_response, access_log;
    int peer_eof;                      /* the client half-closed: once its answers are done, close */
    int upstream_full;                 /* the backend connection's write buffer is full */
    long long body_total, body_left;   /* the request body (Content-Length), what has not arrived yet */
    Buf body_pending;                  /* body bytes received before the backend connection was up */
    Buf replay;                        /* the whole body when it is small: sent again on a retry */
    double deadline, started, ex_deadline, attempt_deadline;
    double headers_timeout, idle_timeout;  /* the data plane's settings, read once */
    /* the exchange in flight */
    PyObject *route, *cluster, *endpoint, *req_head, *task;
    PyObject *method, *target, *host, *request_id, *xff, *ua;
    double sent_at, up_time;           /* the attempt sent upstream; its response head after (s; -1: none) */
    PyObject *accept_enc;              /* Accept-Encoding on a route with a compressor, else NULL */
    PyObject *encoder;                 /* the response's compression.Encoder, when it is compressed */
    PyObject *tried;                   /* endpoints that failed this request (retries go elsewhere) */
    int attempts;
    unsigned long seq;                 /* which request on this connection (a retry timer checks it) */
    Up *up;
    int status;
    long long bytes_out;
    struct H2Sess *h2;                 /* an HTTP/2 stream's exchange (http2.c): its session, */
    int32_t h2_id;                     /* and stream; NULL/0 on an HTTP/1.1 connection */
};

static PyTypeObject UpType, ConnType;
static PyObject *make_bytes_lower(const char *p, Py_ssize_t n);

static void conn_process(Conn *c);
static void conn_finish(Conn *c, int reusable, const char *error, int abort);
#ifdef HP_HAVE_NGHTTP2
/* http2.c: an HTTP/2 stream's answer, made from what the upstream sent */
static int h2_response_head(Conn *c, int status, const Field *f, int nf, const Field *conn, int nconn, PyObject *compressed,
                            long long cl, int no_body);
static void h2_stream_out(Conn *c);
static void h2_stream_done(Conn *c, int abort);
static void h2_simple(Conn *c, int status, const char *body);
static void h2_upstream_attached(Conn *c);
#endif
static void conn_simple(Conn *c, int status, const char *body);
static void conn_send(Conn *c, int fresh_only);
static void conn_write_request(Conn *c, Up *u);
static void conn_update_reading(Conn *c);

/* Call a method, report (not raise) any exception: callbacks from the loop must not fail. */
static void call_quiet(PyObject *obj, PyObject *name) {
    if (obj == NULL || obj == Py_None) return;
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    if (!r) PyErr_WriteUnraisable(obj);
    Py_XDECREF(r);
}

static void write_bytes(PyObject *write, const char *p, Py_ssize_t n) {
    if (!write || n <= 0) return;
    PyObject *b = PyBytes_FromStringAndSize(p, n);
    if (!b) { PyErr_WriteUnraisable(write); return; }
    PyObject *r = PyObject_CallOneArg(write, b);
    Py_DECREF(b);
    if (!r) PyErr_WriteUnraisable(write);
    Py_XDECREF(r);
}

static int add_to_long_attr(PyObject *obj, PyObject *name, long d) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v) return -1;
    long x = PyLong_AsLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    PyObject *n = PyLong_FromLong(x + d);
    if (!n) return -1;
    int r = PyObject_SetAttr(obj, name, n);
    Py_DECREF(n);
    return r;
}

/* ====================================================================================== */
/* Upstream connection                                                                      */
/* ====================================================================================== */

static PyObject *Up_new(PyTypeObject *t, PyObject *args, PyObject *kw) {
    PyObject *endpoint;
    if (!PyArg_ParseTuple(args, "O", &endpoint)) return NULL;
    Up *u = (Up *)t->tp_alloc(t, 0);
    if (!u) return NULL;
    Py_INCREF(endpoint);
    u->endpoint = endpoint;
    return (PyObject *)u;
}

static int Up_traverse(Up *u, visitproc visit, void *arg) {
    Py_VISIT(u->endpoint);
    Py_VISIT(u->transport);
    Py_VISIT(u->write);
    Py_VISIT((PyObject *)u->owner);
    return 0;
}

static int Up_clear(Up *u) {
    Py_CLEAR(u->endpoint);
    Py_CLEAR(u->transport);
    Py_CLEAR(u->write);
    Py_CLEAR(u->owner);
    return 0;
}

static void Up_dealloc(Up *u) {
    PyObject_GC_UnTrack(u);
    Up_clear(u);
    buf_free(&u->in);
    Py_TYPE(u)->tp_free((PyObject *)u);
}

static void up_close(Up *u) {
    if (u->closed) return;
    u->closed = 1;
    if (u->transport) call_quiet(u->transport, s_close);
}

static PyObject *Up_close(Up *u, PyObject *unused) {
    up_close(u);
    Py_RETURN_NONE;
}

static PyObject *Up_connection_made(Up *u, PyObject *transport) {
    Py_INCREF(transport);
    Py_XSETREF(u->transport, transport);
    Py_XSETREF(u->write, PyObject_GetAttr(transport, s_write));
    if (!u->write) return NULL;
    Py_RETURN_NONE;
}

/* Start reading a response for the owner's request. */
static void up_expect(Up *u, int head_only) {
    u->phase = PH_HEAD;
    u->head_only = head_only;
    u->got_bytes = 0;
    u->in.len = 0;
}

/* Back to the endpoint's pool: the exchange is finished with it. */
static void up_release(Up *u) {
    Py_CLEAR(u->owner);
    if (u->closed) return;
    u->reused = 1;
    u->idle_since = now_mono();
    if (u->paused) {
        /* a slow client paused us just as the response ended: the next request must be read */
        u->paused = 0;
        call_quiet(u->transport, s_resume_reading);
    }
    PyObject *pool = PyObject_GetAttr(u->endpoint, s_fast_idle);
    if (!pool || PyList_Append(pool, (PyObject *)u) < 0) {
        PyErr_WriteUnraisable((PyObject *)u);
        up_close(u);
    }
    Py_XDECREF(pool);
}

static int emit_raw(Conn *c, Up *u, const char *p, Py_ssize_t n) {
    if (n <= 0) return 0;
    c->bytes_out += n;
    if (u->client_chunked) {
        if (add_hex(&c->out, (unsigned long long)n) < 0 || buf_add(&c->out, "\r\n", 2) < 0) return -1;
        if (buf_add(&c->out, p, n) < 0) return -1;
        return buf_add(&c->out, "\r\n", 2);
    }
    return buf_add(&c->out, p, n);
}

/* Body bytes for the client, compressed first when the response is (a Python Encoder). */
static int emit_client(Conn *c, Up *u, const char *p, Py_ssize_t n) {
    if (c->encoder == NULL) return emit_raw(c, u, p, n);
    if (n <= 0) return 0;
    PyObject *in = PyBytes_FromStringAndSize(p, n);
    PyObject *out = in ? PyObject_CallMethod(c->encoder, "feed", "O", in) : NULL;
    Py_XDECREF(in);
    if (!out || !PyBytes_Check(out)) { Py_XDECREF(out); PyErr_WriteUnraisable(c->encoder); return -1; }
    int r = emit_raw(c, u, PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out));
    Py_DECREF(out);
    return r;
}

/* The end of a response body: what the encoder still holds, then the last chunk. */
static void emit_end(Conn *c, Up *u) {
    if (c->encoder != NULL) {
        PyObject *tail = PyObject_CallMethod(c->encoder, "finish", NULL);
        if (tail && PyBytes_Check(tail)) emit_raw(c, u, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
        else PyErr_WriteUnraisable(c->encoder);
        Py_XDECREF(tail);
    }
    if (u->client_chunked) buf_str(&c->out, "0\r\n\r\n");
}

static void conn_flush(Conn *c) {
#ifdef HP_HAVE_NGHTTP2
    if (c->h2) { h2_stream_out(c); return; }
#endif
    if (c->out.len && c->state != ST_CLOSED) write_bytes(c->write, c->out.data, c->out.len);
    c->out.len = 0;
}

/* The listener's Alt-Svc (HTTP/3 advertised, ClientTrafficPolicy http3) when the backend's
 * answer has none of its own; borrowed, or NULL. Mirrors exchange._with_alt_svc. */
static PyObject *alt_svc_of(Conn *c, const Field *f, int nf) {
    if (!c->route || !PyTuple_Check(c->route)) return NULL;  /* answered before a route was chosen */
    PyObject *alt = PyTuple_GET_ITEM(c->route, ROUTE_ALT_SVC);
    if (!PyBytes_Check(alt)) return NULL;
    for (int i = 0; i < nf; i++)
        if (ieq(f[i].name, f[i].nlen, "alt-svc")) return NULL;
    return alt;
}

/* The response head: returns bytes consumed, 0 for "need more", -1 invalid (msg set). */
static Py_ssize_t up_head(Up *u, Conn *c, const char *p, Py_ssize_t n, const char **msg) {
    const char *e = find_crlfcrlf(p, n);
    if (!e) {
        if (n > MAX_RESPONSE_HEAD) { *msg = "response head too large"; return -1; }
        return 0;
    }
    const char *eol = memchr(p, '\r', e + 2 - p);
    /* status line: HTTP/1.x SP 3DIGIT [SP reason] */
    if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ') {
        *msg = "bad status line"; return -1;
    }
    int http10 = p[7] == '0';
    if (p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' || (eol - p > 12 && p[12] != ' ')) {
        *msg = "bad status code"; return -1;
    }
    for (const char *q = p; q < eol; q++)
        if (*q == '\n' || (((unsigned char)*q) < 0x20 && *q != '\t')) { *msg = "bad status line"; return -1; }
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    Field f[MAX_FIELDS];
    int nf = parse_fields(eol + 2, e, f, MAX_FIELDS, 0);
    if (nf < 0) { *msg = "bad header"; return -1; }
    Py_ssize_t consumed = e + 4 - p;
    if (status < 200) {
        if (status == 101) { *msg = "unexpected 101 Switching Protocols"; return -1; }
        return consumed;  /* 100 Continue and other interim responses are not forwarded */
    }
    long long cl = -1;
    int chunked = 0, te = 0, close = http10, ka10 = 0;
    Field conn[8];
    int nconn = 0;
    for (int i = 0; i < nf; i++) {
        if (ieq(f[i].name, f[i].nlen, "content-length")) {
            long long v = 0;
            if (f[i].vlen == 0 || f[i].vlen > 18) { *msg = "bad content-length"; return -1; }
            for (Py_ssize_t k = 0; k < f[i].vlen; k++) {
                char ch = f[i].value[k];
                if (ch < '0' || ch > '9') { *msg = "bad content-length"; return -1; }
                v = v * 10 + (ch - '0');
            }
            if (cl >= 0) { *msg = "duplicate content-length"; return -1; }  /* as llhttp: even equal ones */
            cl = v;
        } else if (ieq(f[i].name, f[i].nlen, "transfer-encoding")) {
            te = 1;
            /* the last coding must be chunked */
            Py_ssize_t s = f[i].vlen;
            const char *v = f[i].value;
            Py_ssize_t k = s;
            while (k > 0 && v[k - 1] != ',') k--;
            while (k < s && (v[k] == ' ' || v[k] == '\t')) k++;
            chunked = ieq(v + k, s - k, "chunked");
            if (!chunked) { *msg = "unsupported transfer-encoding"; return -1; }
        } else if (ieq(f[i].name, f[i].nlen, "connection")) {
            if (nconn < 8) conn[nconn++] = f[i];
            if (has_token(f[i].value, f[i].vlen, "close")) close = 1;
            if (has_token(f[i].value, f[i].vlen, "keep-alive")) ka10 = 1;
        }
    }
    if (te && cl >= 0) { *msg = "both content-length and transfer-encoding"; return -1; }
    if (http10 && ka10 && !te) close = 0;
    u->status = status;
    c->status = status;
    c->up_time = now_mono() - c->sent_at;
    int no_body = u->head_only || status == 204 || status == 304;
    PyObject *compressed = NULL;  /* the client's header list when the body gets compressed */
    if (c->accept_enc && !no_body) {
        PyObject *lst = PyList_New(0);
        for (int i = 0; lst && i < nf; i++) {
            if (ieq(f[i].name, f[i].nlen, "content-length") || is_hop(&f[i], conn, nconn)) continue;
            PyObject *name = make_bytes_lower(f[i].name, f[i].nlen);
            PyObject *pair = name ? Py_BuildValue("(Ny#)", name, f[i].value, f[i].vlen) : NULL;
            if (!pair || PyList_Append(lst, pair) < 0) Py_CLEAR(lst);
            Py_XDECREF(pair);
        }
        PyObject *len = cl >= 0 ? PyLong_FromLongLong(cl) : Py_NewRef(Py_None);
        PyObject *r = lst && len ? PyObject_CallMethod(c->hooks, "compression", "OOiOO", PyTuple_GET_ITEM(c->route, ROUTE_COMPRESSION), c->accept_enc,
                                                       status, lst, len) : NULL;
        Py_XDECREF(lst);
        Py_XDECREF(len);
        if (!r) { PyErr_WriteUnraisable(c->hooks); }
        else if (PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2) {
            Py_XSETREF(c->encoder, Py_NewRef(PyTuple_GET_ITEM(r, 0)));
            compressed = Py_NewRef(PyTuple_GET_ITEM(r, 1));
        }
        Py_XDECREF(r);
    }
#ifdef HP_HAVE_NGHTTP2
    if (c->h2) {
        int r = h2_response_head(c, status, f, nf, conn, nconn, compressed, cl, no_body);
        Py_XDECREF(compressed);
        if (r < 0) { *msg = "out of memory"; return -1; }
        u->client_chunked = 0;
        u->keep_alive = !close;
        if (no_body) u->phase = PH_DONE;
        else if (chunked) u->phase = PH_CHUNK_SIZE;
        else if (cl >= 0) { u->remaining = cl; u->phase = cl ? PH_BODY_CL : PH_DONE; }
        else { u->phase = PH_EOF; u->keep_alive = 0; }
        c->started_response = 1;
        c->state = ST_STREAMING;
        return consumed;
    }
#endif
    /* client head */
    Buf *o = &c->out;
    PyObject *reason = reason_of(status);
    buf_str(o, "HTTP/1.1 ");
    add_dec(o, status);
    buf_add(o, " ", 1);
    if (reason) buf_add(o, PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason));
    else buf_str(o, "Unknown");
    buf_add(o, "\r\n", 2);
    if (compressed) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(compressed); i++) {
            PyObject *pair = PyList_GET_ITEM(compressed, i);
            PyObject *n = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
            buf_add(o, PyBytes_AS_STRING(n), PyBytes_GET_SIZE(n));
            buf_add(o, ": ", 2);
            buf_add(o, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
            buf_add(o, "\r\n", 2);
        }
        Py_DECREF(compressed);
    } else {
        for (int i = 0; i < nf; i++) {
            if (ieq(f[i].name, f[i].nlen, "content-length") || is_hop(&f[i], conn, nconn)) continue;
            add_lower(o, f[i].name, f[i].nlen);
            buf_add(o, ": ", 2);
            buf_add(o, f[i].value, f[i].vlen);
            buf_add(o, "\r\n", 2);
        }
    }
    u->client_chunked = 0;
    if (no_body) {
        if (u->head_only && cl >= 0) { buf_str(o, "content-length: "); add_dec(o, cl); buf_add(o, "\r\n", 2); }
        u->phase = PH_DONE;
        u->keep_alive = !close;
    } else if (chunked) {
        u->client_chunked = 1;
        buf_str(o, "transfer-encoding: chunked\r\n");
        u->phase = PH_CHUNK_SIZE;
        u->keep_alive = !close;
    } else if (cl >= 0) {
        if (c->encoder) {
            u->client_chunked = 1;  /* the compressed length is not known up front */
            buf_str(o, "transfer-encoding: chunked\r\n");
        } else {
            buf_str(o, "content-length: ");
            add_dec(o, cl);
            buf_add(o, "\r\n", 2);
        }
        u->remaining = cl;
        u->phase = cl ? PH_BODY_CL : PH_DONE;
        u->keep_alive = !close;
    } else {
        /* the body ends with the connection */
        u->client_chunked = 1;
        buf_str(o, "transfer-encoding: chunked\r\n");
        u->phase = PH_EOF;
        u->keep_alive = 0;
    }
    PyObject *alt = alt_svc_of(c, f, nf);
    if (alt) {
        buf_str(o, "alt-svc: ");
        buf_add(o, PyBytes_AS_STRING(alt), PyBytes_GET_SIZE(alt));
        buf_add(o, "\r\n", 2);
    }
    if (c->body_left > 0) c->close_after = 1;  /* answered before the request body ended */
    if (c->close_after) buf_str(o, "connection: close\r\n");
    if (buf_add(o, "\r\n", 2) < 0) { *msg = "out of memory"; return -1; }
    c->started_response = 1;
    c->state = ST_STREAMING;
    return consumed;
}

/* Feed response bytes; returns bytes consumed, -1 on a protocol error (msg set). */
static Py_ssize_t up_feed(Up *u, Conn *c, const char *p, Py_ssize_t n, const char **msg) {
    Py_ssize_t i = 0;
    while (i < n && u->phase != PH_DONE) {
        switch (u->phase) {
        case PH_HEAD: {
            Py_ssize_t k = up_head(u, c, p + i, n - i, msg);
            if (k < 0) return -1;
            if (k == 0) return i;
            i += k;
            break;
        }
        case PH_BODY_CL: {
            Py_ssize_t k = n - i < u->remaining ? n - i : (Py_ssize_t)u->remaining;
            if (emit_client(c, u, p + i, k) < 0) { *msg = "out of memory"; return -1; }
            i += k;
            u->remaining -= k;
            if (u->remaining == 0) u->phase = PH_DONE;
            break;
        }
        case PH_CHUNK_SIZE: {
            const char *eol = memchr(p + i, '\n', n - i);
            if (!eol) {
                if (n - i > 1024) { *msg = "bad chunk size"; return -1; }
                return i;
            }
            if (eol == p + i || eol[-1] != '\r') { *msg = "bad chunk size"; return -1; }
            unsigned long long v = 0;
            const char *q = p + i;
            int digits = 0;
            for (; q < eol - 1; q++) {
                int ch = lower((unsigned char)*q), d;
                if (ch >= '0' && ch <= '9') d = ch - '0';
                else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
                else break;
                if (++digits > 15) { *msg = "chunk too large"; return -1; }
                v = v * 16 + (unsigned long long)d;
            }
            if (!digits || (q < eol - 1 && *q != ';' && *q != ' ' && *q != '\t')) { *msg = "bad chunk size"; return -1; }
            i = eol + 1 - p;
            if (v == 0) u->phase = PH_TRAILER;
            else { u->remaining = (long long)v; u->phase = PH_CHUNK_DATA; }
            break;
        }
        case PH_CHUNK_DATA: {
            Py_ssize_t k = n - i < u->remaining ? n - i : (Py_ssize_t)u->remaining;
            if (emit_client(c, u, p + i, k) < 0) { *msg = "out of memory"; return -1; }
            i += k;
            u->remaining -= k;
            if (u->remaining == 0) u->phase = PH_CHUNK_CRLF;
            break;
        }
        case PH_CHUNK_CRLF:
            if (n - i < 2) return i;
            if (p[i] != '\r' || p[i + 1] != '\n') { *msg = "bad chunk end"; return -1; }
            i += 2;
            u->phase = PH_CHUNK_SIZE;
            break;
        case PH_TRAILER: {
            /* trailer fields are dropped, as the HTTP/1.1 client side never announced TE: trailers */
            const char *eol = memchr(p + i, '\n', n - i);
            if (!eol) {
                if (n - i > 8192) { *msg = "trailer too large"; return -1; }
                return i;
            }
            if (eol == p + i || eol[-1] != '\r') { *msg = "bad trailer"; return -1; }
            int empty = eol == p + i + 1;
            i = eol + 1 - p;
            if (empty) u->phase = PH_DONE;
            break;
        }
        case PH_EOF:
            if (emit_client(c, u, p + i, n - i) < 0) { *msg = "out of memory"; return -1; }
            i = n;
            break;
        }
    }
    return i;
}

static void up_protocol_error(Up *u, Conn *c, const char *msg) {
    char body[256];
    snprintf(body, sizeof body, "invalid response from backend: %s", msg);
    up_close(u);
    if (c->started_response) {
        conn_flush(c);  /* what was relayed so far (as the Python lane does), then the reset */
        conn_finish(c, 0, body, 1);
    } else {
        c->out.len = 0;
        conn_simple(c, 502, body);
    }
}

static PyObject *Up_data_received(Up *u, PyObject *data) {
    Conn *c = u->owner;
    if (c == NULL || !PyBytes_Check(data)) {
        up_close(u);  /* a response nobody asked for: the connection is unusable */
        Py_RETURN_NONE;
    }
    Py_INCREF(c);
    u->got_bytes = 1;
    const char *p = PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const char *msg = NULL;
    Py_ssize_t used;
    if (u->in.len) {
        if (buf_add(&u->in, p, n) < 0) { Py_DECREF(c); return NULL; }
        used = up_feed(u, c, u->in.data, u->in.len, &msg);
        if (used >= 0) buf_consume(&u->in, used);
    } else {
        used = up_feed(u, c, p, n, &msg);
        if (used >= 0 && used < n && u->phase != PH_DONE && buf_add(&u->in, p + used, n - used) < 0) { Py_DECREF(c); return NULL; }
        if (used >= 0 && u->phase == PH_DONE && used < n) u->keep_alive = 0;  /* bytes after the response */
    }
    if (used < 0) {
        up_protocol_error(u, c, msg);
    } else {
        if (u->phase == PH_DONE && u->in.len) { u->keep_alive = 0; u->in.len = 0; }
        if (u->phase == PH_DONE) emit_end(c, u);
        conn_flush(c);
        if (u->phase == PH_DONE && c->up == u) conn_finish(c, u->keep_alive, NULL, 0);
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Up_eof_received(Up *u, PyObject *unused) {
    Py_RETURN_NONE;  /* close the transport; connection_lost does the rest */
}

static void conn_upstream_lost(Conn *c, Up *u);

static PyObject *Up_connection_lost(Up *u, PyObject *exc) {
    u->closed = 1;
    /* out of the pool, if it was idle there */
    if (u->endpoint) {
        PyObject *pool = PyObject_GetAttr(u->endpoint, s_fast_idle);
        if (pool && PyList_Check(pool)) {
            for (Py_ssize_t i = PyList_GET_SIZE(pool) - 1; i >= 0; i--) {
                if (PyList_GET_ITEM(pool, i) == (PyObject *)u) {
                    PySequence_DelItem(pool, i);
                    break;
                }
            }
        }
        Py_XDECREF(pool);
        PyErr_Clear();
    }
    Conn *c = u->owner;
    if (c != NULL) {
        Py_INCREF(c);
        conn_upstream_lost(c, u);
        Py_DECREF(c);
    }
    Py_CLEAR(u->transport);
    Py_CLEAR(u->write);
    Py_RETURN_NONE;
}

/* A request body faster than the backend takes it: stop reading the client for a while. */
static PyObject *Up_pause_writing(Up *u, PyObject *unused) {
    if (u->owner) { u->owner->upstream_full = 1; conn_update_reading(u->owner); }
    Py_RETURN_NONE;
}

static PyObject *Up_resume_writing(Up *u, PyObject *unused) {
    if (u->owner) { u->owner->upstream_full = 0; conn_update_reading(u->owner); }
    Py_RETURN_NONE;
}

static PyMethodDef Up_methods[] = {
    {"connection_made", (PyCFunction)Up_connection_made, METH_O, NULL},
    {"data_received", (PyCFunction)Up_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)Up_eof_received, METH_NOARGS, NULL},
    {"connection_lost", (PyCFunction)Up_connection_lost, METH_O, NULL},
    {"pause_writing", (PyCFunction)Up_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)Up_resume_writing, METH_NOARGS, NULL},
    {"close", (PyCFunction)Up_close, METH_NOARGS, "Close the connection."},
    {NULL},
};

static PyMemberDef Up_members[] = {
    {"endpoint", T_OBJECT, offsetof(Up, endpoint), READONLY, NULL},
    {"closed", T_INT, offsetof(Up, closed), READONLY, NULL},
    {"reused", T_INT, offsetof(Up, reused), READONLY, NULL},
    {"idle_since", T_DOUBLE, offsetof(Up, idle_since), READONLY, NULL},
    {NULL},
};

static PyTypeObject UpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "homeplane.gateway.frontends._fastlane.Upstream",
    .tp_doc = "An HTTP/1.1 connection to a backend, pooled per endpoint (EndpointState.fast_idle).",
    .tp_basicsize = sizeof(Up),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Up_new,
    .tp_dealloc = (destructor)Up_dealloc,
    .tp_traverse = (traverseproc)Up_traverse,
    .tp_clear = (inquiry)Up_clear,
    .tp_methods = Up_methods,
    .tp_members = Up_members,
};

/* ====================================================================================== */
/* Client connection                                                                        */
/* ====================================================================================== */

static PyObject *Conn_new(PyTypeObject *t, PyObject *args, PyObject *kw) {
    PyObject *server, *hooks, *override = Py_None;
    if (!PyArg_ParseTuple(args, "OO|O", &server, &hooks, &override)) return NULL;
    Conn *c = (Conn *)t->tp_alloc(t, 0);
    if (!c) return NULL;
    c->override = Py_NewRef(override);
    Py_INCREF(server);
    c->server = server;
    Py_INCREF(hooks);
    c->hooks = hooks;
    c->state = ST_IDLE;
    return (PyObject *)c;
}

static void conn_clear_exchange(Conn *c) {
    Py_CLEAR(c->route);
    Py_CLEAR(c->cluster);
    Py_CLEAR(c->endpoint);
    Py_CLEAR(c->req_head);
    Py_CLEAR(c->task);
    Py_CLEAR(c->method);
    Py_CLEAR(c->target);
    Py_CLEAR(c->host);
    Py_CLEAR(c->request_id);
    Py_CLEAR(c->xff);
    Py_CLEAR(c->ua);
    Py_CLEAR(c->accept_enc);
    Py_CLEAR(c->encoder);
    Py_CLEAR(c->tried);
    Py_CLEAR(c->up);
}

static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT(c->server);
    Py_VISIT(c->hooks);
    Py_VISIT(c->transport);
    Py_VISIT(c->write);
    Py_VISIT(c->client_ip);
    Py_VISIT(c->sni);
    Py_VISIT(c->scheme);
    Py_VISIT(c->override);
    Py_VISIT(c->route);
    Py_VISIT(c->cluster);
    Py_VISIT(c->endpoint);
    Py_VISIT(c->req_head);
    Py_VISIT(c->task);
    Py_VISIT(c->encoder);
    Py_VISIT(c->tried);
    Py_VISIT((PyObject *)c->up);
    Py_VISIT((PyObject *)c->h2);
    return 0;
}

static int Conn_clear(Conn *c) {
    conn_clear_exchange(c);
    Py_CLEAR(c->server);
    Py_CLEAR(c->hooks);
    Py_CLEAR(c->transport);
    Py_CLEAR(c->write);
    Py_CLEAR(c->client_ip);
    Py_CLEAR(c->sni);
    Py_CLEAR(c->scheme);
    Py_CLEAR(c->override);
    Py_CLEAR(c->h2);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    Conn_clear(c);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->body_pending);
    buf_free(&c->replay);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static double hooks_float(Conn *c, PyObject *name, double dflt) {
    PyObject *v = PyObject_GetAttr(c->hooks, name);
    if (!v) { PyErr_Clear(); return dflt; }
    double d = v == Py_None ? 0.0 : PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (PyErr_Occurred()) { PyErr_Clear(); return dflt; }
    return d;
}

static void conn_handoff(Conn *c) {
    /* Everything from the first unanswered byte on goes to the full implementation. */
    c->state = ST_HANDED;
    PyObject *data = PyBytes_FromStringAndSize(c->in.data, c->in.len);
    c->in.len = 0;
    if (!data) { PyErr_WriteUnraisable((PyObject *)c); return; }
    PyObject *r = PyObject_CallMethodObjArgs(c->hooks, s_handoff, (PyObject *)c, c->transport ? c->transport : Py_None,
                                             data, c->read_paused ? Py_True : Py_False, NULL);
    Py_DECREF(data);
    if (!r) PyErr_WriteUnraisable((PyObject *)c);
    Py_XDECREF(r);
    c->read_paused = 0;
}

static PyObject *Conn_connection_made(Conn *c, PyObject *transport) {
    Py_INCREF(transport);
    Py_XSETREF(c->transport, transport);
    Py_XSETREF(c->write, PyObject_GetAttr(transport, s_write));
    if (!c->write) return NULL;
    c->headers_timeout = hooks_float(c, s_headers_timeout, 30.0);
    c->idle_timeout = hooks_float(c, s_idle_timeout, 3600.0);
    PyObject *log = PyObject_GetAttr(c->hooks, s_access_log);
    c->access_log = log == Py_True;
    Py_XDECREF(log);
    PyErr_Clear();
    c->deadline = c->headers_timeout > 0 ? now_mono() + c->headers_timeout : 0;
    PyObject *r = PyObject_CallMethod(c->hooks, "opened", "OO", (PyObject *)c, transport);
    if (!r) return NULL;
    if (r == Py_None) {
        /* ALPN chose h2: not ours */
        Py_DECREF(r);
        conn_handoff(c);
        Py_RETURN_NONE;
    }
    if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 3) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "opened() must return (client_ip, sni, scheme)");
        return NULL;
    }
    Py_XSETREF(c->client_ip, Py_NewRef(PyTuple_GET_ITEM(r, 0)));
    Py_XSETREF(c->sni, Py_NewRef(PyTuple_GET_ITEM(r, 1)));
    Py_XSETREF(c->scheme, Py_NewRef(PyTuple_GET_ITEM(r, 2)));
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static const char *METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", NULL};

/* The most specific listener for a name (the table lists them most specific first), as
 * routing.router.PortTable.listener_for; a borrowed reference, or NULL. */
static PyObject *listener_for(PyObject *table, PyObject *name) {
    const char *k = PyBytes_AS_STRING(name);
    Py_ssize_t kn = PyBytes_GET_SIZE(name);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table); i++) {
        PyObject *cand = PyTuple_GET_ITEM(table, i);
        PyObject *h = PyTuple_GET_ITEM(cand, 0);
        if (h == Py_None) return cand;
        const char *hs = PyBytes_AS_STRING(h);
        Py_ssize_t hn = PyBytes_GET_SIZE(h);
        if (hn == kn && memcmp(hs, k, kn) == 0) return cand;
        if (hn > 2 && hs[0] == '*' && hs[1] == '.' && kn > hn - 1 && memcmp(k + kn - (hn - 1), hs + 1, hn - 1) == 0) return cand;
    }
    return NULL;
}

/* The listener, virtual host and rule for a request, from the table gateway/fastlane.py
 * compiled. Returns a new reference to the route tuple, or NULL: not for the fast lane. */
static PyObject *lookup(Conn *c, PyObject *host, const char *path, Py_ssize_t plen) {
    PyObject *table = PyObject_GetAttr(c->server, s_fast);
    if (!table) { PyErr_Clear(); return NULL; }
    PyObject *result = NULL;
    if (!PyTuple_Check(table)) goto done;
    int by_sni = c->sni && c->sni != Py_None;
    PyObject *lt = listener_for(table, by_sni ? c->sni : host);
    if (!lt) goto done;
    /* a connection made for one HTTPS listener asking for a name another listener owns:
     * Python answers 421 Misdirected Request (Exchange.start) */
    if (by_sni && PyTuple_GET_SIZE(table) > 1 && listener_for(table, host) != lt) goto done;
    PyObject *vh = PyDict_GetItemWithError(PyTuple_GET_ITEM(lt, 1), host);
    if (!vh) {
        if (PyErr_Occurred()) { PyErr_Clear(); goto done; }
        PyObject *wild = PyTuple_GET_ITEM(lt, 2);
        const char *hs = PyBytes_AS_STRING(host);
        Py_ssize_t hn = PyBytes_GET_SIZE(host);
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(wild); i++) {
            PyObject *w = PyTuple_GET_ITEM(wild, i);
            PyObject *suf = PyTuple_GET_ITEM(w, 0);
            Py_ssize_t sn = PyBytes_GET_SIZE(suf);
            if (hn > sn && memcmp(hs + hn - sn, PyBytes_AS_STRING(suf), sn) == 0) { vh = PyTuple_GET_ITEM(w, 1); break; }
        }
        if (!vh) vh = PyTuple_GET_ITEM(lt, 3);
        if (vh == Py_None) goto done;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(vh); i++) {
        PyObject *m = PyTuple_GET_ITEM(vh, i);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(m, 0));
        PyObject *mp = PyTuple_GET_ITEM(m, 1), *ms = PyTuple_GET_ITEM(m, 2);
        int hit;
        if (kind == MATCH_EXACT) {
            hit = PyBytes_GET_SIZE(mp) == plen && memcmp(PyBytes_AS_STRING(mp), path, plen) == 0;
        } else if (kind == MATCH_PREFIX) {
            Py_ssize_t sn = PyBytes_GET_SIZE(ms);
            hit = (PyBytes_GET_SIZE(mp) == plen && memcmp(PyBytes_AS_STRING(mp), path, plen) == 0) ||
                  (plen >= sn && memcmp(PyBytes_AS_STRING(ms), path, sn) == 0);
        } else {
            goto done;  /* a rule this lane cannot evaluate comes first: Python decides */
        }
        if (hit) {
            PyObject *route = PyTuple_GET_ITEM(m, 3);
            if (route != Py_None && PyTuple_Check(route) && PyTuple_GET_SIZE(route) == ROUTE_FIELDS) result = Py_NewRef(route);
            goto done;
        }
    }
done:
    Py_DECREF(table);
    return result;
}

/* Pick an endpoint: the only one when all are available, else the cluster's balancer.
 * Returns a new reference, or NULL for "let Python answer" (none, circuit breaker open). */
static PyObject *choose_endpoint(PyObject *cluster, long max_requests) {
    PyObject *eps = PyObject_GetAttr(cluster, s_endpoints);
    if (!eps || !PyList_Check(eps) || PyList_GET_SIZE(eps) == 0) { Py_XDECREF(eps); PyErr_Clear(); return NULL; }
    long active = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(eps); i++) {
        PyObject *a = PyObject_GetAttr(PyList_GET_ITEM(eps, i), s_active);
        if (!a) { Py_DECREF(eps); PyErr_Clear(); return NULL; }
        active += PyLong_AsLong(a);
        Py_DECREF(a);
    }
    if (active >= max_requests) { Py_DECREF(eps); return NULL; }
    PyObject *ep = NULL;
    if (PyList_GET_SIZE(eps) == 1) {
        PyObject *all = PyObject_GetAttr(cluster, s_all_available);
        if (all == Py_True) ep = Py_NewRef(PyList_GET_ITEM(eps, 0));
        Py_XDECREF(all);
    }
    if (!ep) {
        ep = PyObject_CallMethodNoArgs(cluster, s_pick);
        if (ep == Py_None) Py_CLEAR(ep);
    }
    Py_DECREF(eps);
    PyErr_Clear();
    return ep;
}

static PyObject *make_bytes_lower(const char *p, Py_ssize_t n) {
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    if (!b) return NULL;
    char *d = PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++) d[i] = (char)lower((unsigned char)p[i]);
    return b;
}

/* Host (or :authority) -> the lower-case name routes are keyed by, without port or trailing
 * dots; NULL when the value is not plainly valid (Python answers it). */
static PyObject *host_key(const char *hv, Py_ssize_t hn) {
    if (hn == 0 || hv[0] == '[') return NULL;
    for (Py_ssize_t i = 0; i < hn; i++)
        if (!HOST_SAFE[(unsigned char)hv[i]]) return NULL;  /* Python answers 400 */
    for (Py_ssize_t i = hn - 1; i >= 0; i--) {
        if (hv[i] == ':') {
            int digits = i < hn - 1 && hn - 1 - i <= 5;
            long port = 0;
            for (Py_ssize_t j = i + 1; j < hn; j++) {
                if (hv[j] < '0' || hv[j] > '9') digits = 0;
                else port = port * 10 + (hv[j] - '0');
            }
            if (port > 65535) digits = 0;
            if (digits) hn = i;
            else if (i < hn - 1) return NULL;  /* a port that is not a number: Python answers 400 */
            break;
        }
    }
    while (hn > 0 && hv[hn - 1] == '.') hn--;
    if (hn == 0) return NULL;
    PyObject *host = make_bytes_lower(hv, hn);
    if (!host) PyErr_Clear();
    return host;
}

/* The route and endpoint for a request (the endpoint's in-flight count taken): 1 with new
 * references in *host, *route, *ep; 0 when the fast lane does not serve it. */
static int route_request(Conn *c, const char *hv, Py_ssize_t hn, const char *path, Py_ssize_t plen,
                         PyObject **host, PyObject **route, PyObject **ep) {
    if (!path_is_canonical(path, plen)) return 0;  /* normalised in Python */
    PyObject *h = host_key(hv, hn);
    if (!h) return 0;
    PyObject *r = lookup(c, h, path, plen);
    if (!r) { Py_DECREF(h); return 0; }
    long max_requests = PyLong_AsLong(PyTuple_GET_ITEM(r, ROUTE_MAX_REQUESTS));
    PyObject *e = choose_endpoint(PyTuple_GET_ITEM(r, ROUTE_CLUSTER), max_requests);
    if (!e) { Py_DECREF(r); Py_DECREF(h); return 0; }
    if (add_to_long_attr(e, s_active, 1) < 0) { PyErr_Clear(); Py_DECREF(e); Py_DECREF(r); Py_DECREF(h); return 0; }
    *host = h;
    *route = r;
    *ep = e;
    return 1;
}

/* The exchange starts (it owns the route and endpoint references from here on). */
static void exchange_begin(Conn *c, PyObject *route, PyObject *ep, int head_only, const Field *accept_enc, long long body) {
    c->route = route;
    c->cluster = Py_NewRef(PyTuple_GET_ITEM(route, ROUTE_CLUSTER));
    c->endpoint = ep;
    c->head_only = head_only;
    c->retried = 0;
    c->started_response = 0;
    c->status = 0;
    c->bytes_out = 0;
    c->started = c->sent_at = now_mono();
    c->up_time = -1;
    c->attempts = 1;
    c->seq++;
    if (PyTuple_GET_SIZE(PyTuple_GET_ITEM(route, ROUTE_COMPRESSION)) > 0 && accept_enc)
        c->accept_enc = PyBytes_FromStringAndSize(accept_enc->value, accept_enc->vlen);
    c->body_total = c->body_left = body;
    c->body_pending.len = 0;
    c->replay.len = 0;
    double timeout = PyFloat_AsDouble(PyTuple_GET_ITEM(route, ROUTE_TIMEOUT));
    double btimeout = PyFloat_AsDouble(PyTuple_GET_ITEM(route, ROUTE_BACKEND_TIMEOUT));
    c->ex_deadline = timeout > 0 ? c->started + timeout : 0;
    c->attempt_deadline = btimeout > 0 ? c->started + btimeout : 0;
}

/* X-Forwarded-For/Proto/Host and X-Request-Id at the end of the upstream head, as the Python
 * lane adds them; where the request id is in h (for the access log). */
static void add_forwarding(Conn *c, Buf *h, const Field *xff, const Field *host, const Field *rid, Py_ssize_t *rid_at, Py_ssize_t *rid_len) {
    buf_str(h, "x-forwarded-for: ");
    if (xff && xff->vlen) { buf_add(h, xff->value, xff->vlen); buf_add(h, ", ", 2); }
    buf_add(h, PyBytes_AS_STRING(c->client_ip), PyBytes_GET_SIZE(c->client_ip));
    buf_str(h, "\r\nx-forwarded-proto: ");
    buf_add(h, PyBytes_AS_STRING(c->scheme), PyBytes_GET_SIZE(c->scheme));
    buf_str(h, "\r\nx-forwarded-host: ");
    buf_add(h, host->value, host->vlen);
    buf_str(h, "\r\nx-request-id: ");
    *rid_at = h->len;
    if (rid && rid->vlen) buf_add(h, rid->value, rid->vlen);
    else add_request_id(h);
    *rid_len = h->len - *rid_at;
    buf_str(h, "\r\n");
}

/* What the access log needs, only when it is on (host: a new reference, taken). */
static void keep_for_log(Conn *c, const char *m, Py_ssize_t mlen, const char *t, Py_ssize_t tlen, Buf *h, Py_ssize_t rid_at,
                         Py_ssize_t rid_len, const Field *xff, const Field *ua, PyObject *host) {
    if (!c->access_log) { Py_DECREF(host); return; }
    c->method = PyBytes_FromStringAndSize(m, mlen);
    c->target = PyBytes_FromStringAndSize(t, tlen);
    c->request_id = PyBytes_FromStringAndSize(h->data + rid_at, rid_len);
    c->xff = xff ? PyBytes_FromStringAndSize(xff->value, xff->vlen) : Py_NewRef(Py_None);
    c->ua = ua ? PyBytes_FromStringAndSize(ua->value, ua->vlen) : Py_NewRef(Py_None);
    c->host = host;
}

/* Try to start the request at the head of the input buffer.
 * 1: started (or answered), 0: need more bytes, -1: hand the connection over. */
static int conn_start(Conn *c) {
    const char *p = c->in.data;
    Py_ssize_t n = c->in.len;
    const char *e = find_crlfcrlf(p, n);
    if (!e) {
        if (n > MAX_HEAD) return -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)p[i];
            if ((ch < 0x20 && ch != '\r' && ch != '\n' && ch != '\t') || ch >= 0x7f) return -1;  /* not a plain head */
            if (ch == '\n' && (i == 0 || p[i - 1] != '\r')) return -1;  /* bare LF: llhttp answers it at once */
        }
        return 0;
    }
    /* request line */
    const char *sp = memchr(p, ' ', e - p);
    if (!sp) return -1;
    int known = 0;
    for (const char **m = METHODS; *m; m++)
        if ((Py_ssize_t)strlen(*m) == sp - p && memcmp(*m, p, sp - p) == 0) { known = 1; break; }
    if (!known) return -1;
    const char *t = sp + 1;
    const char *te = t;
    while (te < e && (unsigned char)*te > 0x20 && (unsigned char)*te < 0x7f) te++;
    if (te == t || *t != '/' || te - t > MAX_URL || e - te < 10 || memcmp(te, " HTTP/1.1\r\n", 11) != 0) return -1;
    const char *fields_start = te + 11;
    Field f[MAX_HEADERS];
    int nf = fields_start > e ? 0 : parse_fields(fields_start, e, f, MAX_HEADERS, 1);
    if (nf < 0) return -1;
    Py_ssize_t hbytes = 0;
    int ihost = -1, ixff = -1, irid = -1, icl = -1, iae = -1, iua = -1, nconn = 0;
    long long cl = 0;
    Field conn[8];
    int close = 0;
    for (int i = 0; i < nf; i++) {
        const Field *x = &f[i];
        hbytes += x->nlen + x->vlen + 4;
        switch (lower((unsigned char)x->name[0])) {
        case 'a':
            if (ieq(x->name, x->nlen, "accept-encoding")) { if (iae >= 0) return -1; iae = i; }
            break;
        case 'c':
            if (ieq(x->name, x->nlen, "content-length")) {
                if (icl >= 0 || x->vlen == 0 || x->vlen > 15 || (x->vlen > 1 && x->value[0] == '0')) return -1;
                cl = 0;
                for (Py_ssize_t k = 0; k < x->vlen; k++) {
                    if (x->value[k] < '0' || x->value[k] > '9') return -1;
                    cl = cl * 10 + (x->value[k] - '0');
                }
                icl = i;
            } else if (ieq(x->name, x->nlen, "connection")) {
                if (has_token(x->value, x->vlen, "upgrade") || nconn == 8) return -1;
                if (has_token(x->value, x->vlen, "close")) close = 1;
                conn[nconn++] = *x;
            }
            break;
        case 'e':
            if (ieq(x->name, x->nlen, "expect")) return -1;
            break;
        case 'h':
            if (ieq(x->name, x->nlen, "host")) { if (ihost >= 0) return -1; ihost = i; }
            break;
        case 't':
            if (ieq(x->name, x->nlen, "transfer-encoding")) return -1;
            break;
        case 'u':
            if (ieq(x->name, x->nlen, "upgrade")) return -1;
            if (iua < 0 && ieq(x->name, x->nlen, "user-agent")) iua = i;
            break;
        case 'x':
            if (ieq(x->name, x->nlen, "x-forwarded-for")) { if (ixff >= 0) return -1; ixff = i; }
            else if (ieq(x->name, x->nlen, "x-request-id")) { if (irid >= 0) return -1; irid = i; }
            break;
        }
    }
    if (hbytes > MAX_HEAD || ihost < 0) return -1;
    const char *q = memchr(t, '?', te - t);
    Py_ssize_t plen = q ? q - t : te - t;
    PyObject *host, *route, *ep;
    if (!route_request(c, f[ihost].value, f[ihost].vlen, t, plen, &host, &route, &ep)) return -1;
    /* ours from here on */
    c->close_after = close;
    exchange_begin(c, route, ep, sp - p == 4 && memcmp(p, "HEAD", 4) == 0, iae >= 0 ? &f[iae] : NULL, cl);
    /* the upstream request head */
    Buf h = {0};
    buf_add(&h, p, te - p);
    buf_str(&h, " HTTP/1.1\r\n");
    for (int i = 0; i < nf; i++) {
        const Field *x = &f[i];
        if (i == ixff || i == irid) continue;
        if (is_hop(x, conn, nconn)) continue;
        if (ieq(x->name, x->nlen, "x-forwarded-proto") || ieq(x->name, x->nlen, "x-forwarded-host") ||
            ieq(x->name, x->nlen, "content-length"))
            continue;
        add_lower(&h, x->name, x->nlen);
        buf_add(&h, ": ", 2);
        buf_add(&h, x->value, x->vlen);
        buf_add(&h, "\r\n", 2);
    }
    Py_ssize_t rid_at, rid_len;
    add_forwarding(c, &h, ixff >= 0 ? &f[ixff] : NULL, &f[ihost], irid >= 0 ? &f[irid] : NULL, &rid_at, &rid_len);
    if (cl > 0) {
        buf_str(&h, "content-length: ");
        buf_add(&h, f[icl].value, f[icl].vlen);
        buf_str(&h, "\r\n");
    }
    if (buf_str(&h, "\r\n") < 0) { buf_free(&h); return -1; }
    c->req_head = PyBytes_FromStringAndSize(h.data, h.len);
    keep_for_log(c, p, sp - p, t, te - t, &h, rid_at, rid_len, ixff >= 0 ? &f[ixff] : NULL, iua >= 0 ? &f[iua] : NULL, host);
    buf_free(&h);
    buf_consume(&c->in, e + 4 - p);
    if (!c->req_head) { PyErr_Clear(); conn_finish(c, 0, "out of memory", 1); return 1; }
    conn_send(c, 0);
    return 1;
}

/* The request head, and the body that arrived while there was no backend connection yet. */
static void conn_write_request(Conn *c, Up *u) {
#ifdef HP_HAVE_NGHTTP2
    if (c->h2) h2_upstream_attached(c);  /* an HTTP/2 client that does not keep up: not read yet */
#endif
    PyObject *r = PyObject_CallOneArg(u->write, c->req_head);
    if (!r) PyErr_WriteUnraisable((PyObject *)u);
    Py_XDECREF(r);
    if (c->body_pending.len) {
        write_bytes(u->write, c->body_pending.data, c->body_pending.len);
        c->body_pending.len = 0;
        conn_update_reading(c);  /* reading may have paused while the connection was being opened */
    }
}

/* Request body bytes from the client: to the backend when it is connected, else kept. */
static void conn_body(Conn *c, const char *p, Py_ssize_t n) {
    if (c->body_total <= MAX_REPLAY) buf_add(&c->replay, p, n);
    c->body_left -= n;
    Up *u = c->up;
    if (u && !u->closed && (c->state == ST_WAITING || c->state == ST_STREAMING)) write_bytes(u->write, p, n);
    else buf_add(&c->body_pending, p, n);
}

/* Reading from the client pauses while too much waits here or the backend cannot take more. */
static void conn_update_reading(Conn *c) {
    if (c->state == ST_CLOSED || c->state == ST_HANDED || !c->transport) return;
    int want = c->upstream_full || c->in.len + c->body_pending.len > MAX_PIPELINED;
    if (want && !c->read_paused) {
        c->read_paused = 1;
        call_quiet(c->transport, s_pause_reading);
    } else if (!want && c->read_paused) {
        c->read_paused = 0;
        call_quiet(c->transport, s_resume_reading);
    }
}

/* Send the request on a pooled connection, or open one (fresh_only: skip the pool). */
static void conn_send(Conn *c, int fresh_only) {
    Up *u = NULL;
    if (!fresh_only) {
        PyObject *pool = PyObject_GetAttr(c->endpoint, s_fast_idle);
        if (pool && PyList_Check(pool)) {
            while (PyList_GET_SIZE(pool) > 0) {
                Py_ssize_t last = PyList_GET_SIZE(pool) - 1;
                Up *cand = (Up *)Py_NewRef(PyList_GET_ITEM(pool, last));
                PySequence_DelItem(pool, last);
                if (!cand->closed && cand->transport) { u = cand; break; }
                Py_DECREF(cand);
            }
        }
        Py_XDECREF(pool);
        PyErr_Clear();
    }
    if (u) {
        c->up = u;
        Py_INCREF(c);
        Py_XSETREF(u->owner, c);
        up_expect(u, c->head_only);
        c->state = ST_WAITING;
        conn_write_request(c, u);
        return;
    }
    c->state = ST_CONNECTING;
    PyObject *task = PyObject_CallMethodObjArgs(c->hooks, s_connect, (PyObject *)c, c->endpoint, PyTuple_GET_ITEM(c->route, ROUTE_CONNECT_TIMEOUT), NULL);
    if (!task) {
        PyErr_WriteUnraisable((PyObject *)c);
        conn_simple(c, 503, "upstream connect error");
        return;
    }
    Py_XSETREF(c->task, task);
}

static void passive_result(Conn *c, PyObject *status) {
    if (PyTuple_GET_ITEM(c->route, ROUTE_PASSIVE) != Py_True) return;
    PyObject *r = PyObject_CallMethodObjArgs(c->cluster, s_result, c->endpoint, status, status == Py_None ? Py_True : Py_False, NULL);
    if (!r) PyErr_WriteUnraisable(c->cluster);
    Py_XDECREF(r);
}

/* The exchange is over: the upstream back to its pool (or closed), the access log, then the
 * next request on this connection. abort: reset the client (the response is incomplete). */
static void conn_finish(Conn *c, int reusable, const char *error, int abort) {
    Up *u = c->up;
    c->up = NULL;
    if (c->body_left > 0) {
        /* answered before the request body was all here: neither connection can be reused */
        c->close_after = 1;
        reusable = 0;
    }
    c->upstream_full = 0;
    c->body_pending.len = 0;
    c->replay.len = 0;
    if (c->endpoint) {
        if (add_to_long_attr(c->endpoint, s_active, -1) < 0) PyErr_WriteUnraisable(c->endpoint);
        if (!error && c->status) {
            PyObject *st = PyLong_FromLong(c->status);
            if (st) { passive_result(c, st); Py_DECREF(st); }
        }
    }
    if (u) {
        if (reusable && !u->closed && !abort) up_release(u);
        else { Py_CLEAR(u->owner); up_close(u); }
        Py_DECREF(u);
    }
    if (c->task) {
        call_quiet(c->task, s_cancel);
        Py_CLEAR(c->task);
    }
    served++;
    if (c->host) {
        PyObject *dur = PyFloat_FromDouble(now_mono() - c->started);
        PyObject *r = PyObject_CallMethod(c->hooks, "finished", "OOOiLLOs", (PyObject *)c, c->route, c->endpoint ? c->endpoint : Py_None,
                                          c->status, c->body_total - c->body_left, c->bytes_out, dur ? dur : Py_None, error);
        Py_XDECREF(dur);
        if (!r) PyErr_WriteUnraisable((PyObject *)c);
        Py_XDECREF(r);
    }
    conn_clear_exchange(c);
    if (c->state == ST_CLOSED) return;
#ifdef HP_HAVE_NGHTTP2
    if (c->h2) { c->state = ST_CLOSED; h2_stream_done(c, abort); return; }  /* one exchange per stream */
#endif
    if (abort) {
        c->state = ST_CLOSED;
        call_quiet(c->transport, s_abort);
        return;
    }
    if (c->close_after || (c->peer_eof && c->in.len == 0)) {
        c->state = ST_CLOSED;
        call_quiet(c->transport, s_close);
        return;
    }
    c->state = ST_IDLE;
    double t = c->in.len ? c->headers_timeout : c->idle_timeout;
    c->deadline = t > 0 ? now_mono() + t : 0;
    conn_process(c);  /* pipelined requests; reading resumes if it was paused */
}

/* An answer made here (502/503/504), before any response byte went to the client. */
static void conn_simple(Conn *c, int status, const char *body) {
    Up *u = c->up;
    if (u) { c->up = NULL; Py_CLEAR(u->owner); up_close(u); Py_DECREF(u); }
    c->status = status;
#ifdef HP_HAVE_NGHTTP2
    if (c->h2) { h2_simple(c, status, body); conn_finish(c, 0, body, 0); return; }
#endif
    Buf *o = &c->out;
    o->len = 0;
    PyObject *reason = reason_of(status);
    Py_ssize_t blen = (Py_ssize_t)strlen(body) + 1;
    if (c->body_left > 0) c->close_after = 1;  /* the rest of the body will not be read */
    buf_str(o, "HTTP/1.1 ");
    add_dec(o, status);
    buf_add(o, " ", 1);
    if (reason) buf_add(o, PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason));
    buf_str(o, "\r\ncontent-type: text/plain\r\ncontent-length: ");
    add_dec(o, blen);
    buf_str(o, "\r\n");
    PyObject *alt = alt_svc_of(c, NULL, 0);
    if (alt) {
        buf_str(o, "alt-svc: ");
        buf_add(o, PyBytes_AS_STRING(alt), PyBytes_GET_SIZE(alt));
        buf_add(o, "\r\n", 2);
    }
    if (c->close_after) buf_str(o, "connection: close\r\n");
    buf_str(o, "\r\n");
    if (!c->head_only) { buf_cstr(o, body); buf_add(o, "\n", 1); c->bytes_out = blen; }
    conn_flush(c);
    conn_finish(c, 0, body, 0);
}

static void conn_process(Conn *c) {
    for (;;) {
        if (c->body_left > 0 && c->in.len > 0 && c->state >= ST_CONNECTING && c->state <= ST_STREAMING) {
            Py_ssize_t take = c->in.len < c->body_left ? c->in.len : (Py_ssize_t)c->body_left;
            conn_body(c, c->in.data, take);
            buf_consume(&c->in, take);
            continue;
        }
        if (c->state != ST_IDLE || c->in.len == 0) break;
        int r = conn_start(c);
        if (r == 0) break;
        if (r < 0) { conn_handoff(c); return; }
    }
    conn_update_reading(c);
}

static PyObject *Conn_data_received(Conn *c, PyObject *data) {
    if (c->state == ST_CLOSED || c->state == ST_HANDED) Py_RETURN_NONE;
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    if (c->state == ST_IDLE && c->in.len == 0)
        c->deadline = c->headers_timeout > 0 ? now_mono() + c->headers_timeout : 0;
    if (buf_add(&c->in, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0) return NULL;
    Py_INCREF(c);
    conn_process(c);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_eof_received(Conn *c, PyObject *unused) {
    /* a half-closed client may still wait for its answer (then the connection closes) */
    if (c->state == ST_CONNECTING || c->state == ST_WAITING || c->state == ST_STREAMING) { c->peer_eof = 1; Py_RETURN_TRUE; }
    Py_RETURN_NONE;
}

static PyObject *Conn_connection_lost(Conn *c, PyObject *exc) {
    int state = c->state;
    c->state = ST_CLOSED;
    if (state != ST_HANDED) {
        PyObject *r = PyObject_CallMethod(c->hooks, "closed", "O", (PyObject *)c);
        if (!r) PyErr_WriteUnraisable((PyObject *)c);
        Py_XDECREF(r);
    }
    if (state == ST_CONNECTING || state == ST_WAITING || state == ST_STREAMING) {
        if (!c->status) c->status = 499;
        c->state = ST_CLOSED;
        conn_finish(c, 0, "client closed", 0);
    }
    Py_CLEAR(c->write);
    Py_CLEAR(c->transport);
    Py_RETURN_NONE;
}

static PyObject *s_later;

/* An attempt failed before any response (connect error, reset): retry on another endpoint after
 * a backoff when the route's BackendTrafficPolicy allows it and the body can be sent again,
 * else answer status (503 for connect errors, 502 for resets), as the Python lane does. */
static void conn_failed_attempt(Conn *c, int status, const char *msg) {
    passive_result(c, Py_None);
    long retries = PyLong_AsLong(PyTuple_GET_ITEM(c->route, ROUTE_RETRIES));
    int replayable = c->body_total == 0 || (c->body_left == 0 && c->body_total <= MAX_REPLAY);
    if (c->attempts <= retries && replayable && c->endpoint) {
        Up *u = c->up;
        if (u) { c->up = NULL; Py_CLEAR(u->owner); up_close(u); Py_DECREF(u); }
        if (add_to_long_attr(c->endpoint, s_active, -1) < 0) PyErr_WriteUnraisable(c->endpoint);
        if (!c->tried) c->tried = PyList_New(0);
        if (c->tried) PyList_Append(c->tried, c->endpoint);
        Py_CLEAR(c->endpoint);
        c->state = ST_CONNECTING;  /* waiting for the backoff timer, then connecting again */
        double base = PyFloat_AsDouble(PyTuple_GET_ITEM(c->route, ROUTE_BACKOFF));
        double delay = base * (double)(1UL << (c->attempts - 1 < 16 ? c->attempts - 1 : 16)) * ((double)rand() / RAND_MAX);
        PyObject *r = PyObject_CallMethod(c->hooks, "later", "Odk", (PyObject *)c, delay, c->seq);
        if (r) { Py_DECREF(r); return; }
        PyErr_WriteUnraisable(c->hooks);
    }
    conn_simple(c, status, msg);
}

/* The backoff is over: pick an endpoint again (not one that failed, while others are left). */
static PyObject *Conn_retry(Conn *c, PyObject *arg) {
    unsigned long seq = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (seq != c->seq || c->state != ST_CONNECTING || c->endpoint != NULL || c->route == NULL) Py_RETURN_NONE;
    Py_INCREF(c);
    PyObject *eps = PyObject_GetAttr(c->cluster, s_endpoints);
    if (eps && c->tried && PyList_GET_SIZE(c->tried) >= PyObject_Size(eps)) PyList_SetSlice(c->tried, 0, PyList_GET_SIZE(c->tried), NULL);
    Py_XDECREF(eps);
    PyObject *ep = PyObject_CallMethod(c->cluster, "pick", "OO", Py_None, c->tried ? c->tried : Py_None);
    PyErr_Clear();
    if (ep == NULL || ep == Py_None) {
        Py_XDECREF(ep);
        conn_simple(c, 503, "no healthy upstream");
    } else if (add_to_long_attr(ep, s_active, 1) < 0) {
        PyErr_Clear();
        Py_DECREF(ep);
        conn_simple(c, 503, "no healthy upstream");
    } else {
        c->endpoint = ep;
        c->attempts++;
        c->sent_at = now_mono();
        double bt = PyFloat_AsDouble(PyTuple_GET_ITEM(c->route, ROUTE_BACKEND_TIMEOUT));
        c->attempt_deadline = bt > 0 ? now_mono() + bt : 0;
        c->body_pending.len = 0;
        buf_add(&c->body_pending, c->replay.data, c->replay.len);
        conn_send(c, 0);
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static void conn_upstream_lost(Conn *c, Up *u) {
    if (c->up != u) return;
    if (u->phase == PH_EOF) {
        /* a body delimited by the connection's end is complete */
        emit_end(c, u);
        conn_flush(c);
        conn_finish(c, 0, NULL, 0);
        return;
    }
    if (c->state == ST_WAITING && !u->got_bytes) {
        int replayable = c->body_total == 0 || (c->body_left == 0 && c->body_total <= MAX_REPLAY);
        if (u->reused && !c->retried && replayable) {
            /* a pooled connection the backend had already closed: not a real attempt */
            c->retried = 1;
            c->up = NULL;
            Py_CLEAR(u->owner);
            Py_DECREF(u);
            c->body_pending.len = 0;
            buf_add(&c->body_pending, c->replay.data, c->replay.len);
            conn_send(c, 1);
            return;
        }
        conn_failed_attempt(c, 502, "upstream connection reset before the response");
        return;
    }
    if (c->started_response) {
        c->out.len = 0;
        conn_finish(c, 0, "upstream reset during the response", 1);
    } else {
        conn_failed_attempt(c, 502, "upstream connection reset before the response");
    }
}

/* Called by gateway/fastlane.py when a connection it opened for this exchange is up. */
static PyObject *Conn_connected(Conn *c, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &UpType)) {
        PyErr_SetString(PyExc_TypeError, "expected an Upstream");
        return NULL;
    }
    Up *u = (Up *)arg;
    Py_CLEAR(c->task);
    if (c->state != ST_CONNECTING) {
        up_release(u);  /* nobody waits for it any more: a spare for the pool */
        Py_RETURN_NONE;
    }
    Py_INCREF(u);
    c->up = u;
    Py_INCREF(c);
    Py_XSETREF(u->owner, c);
    up_expect(u, c->head_only);
    c->state = ST_WAITING;
    conn_write_request(c, u);
    Py_RETURN_NONE;
}

static PyObject *Conn_connect_failed(Conn *c, PyObject *msg) {
    Py_CLEAR(c->task);
    if (c->state != ST_CONNECTING) Py_RETURN_NONE;
    const char *m = PyUnicode_Check(msg) ? PyUnicode_AsUTF8(msg) : NULL;
    char body[512];
    snprintf(body, sizeof body, "upstream connect error: %s", m ? m : "?");
    PyErr_Clear();
    conn_failed_attempt(c, 503, body);
    Py_RETURN_NONE;
}

static void conn_timeout(Conn *c, const char *what) {
    if (c->started_response) {
        c->out.len = 0;
        conn_finish(c, 0, what, 1);
    } else {
        conn_simple(c, 504, what);
    }
}

static PyObject *Conn_check_deadline(Conn *c, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    Py_INCREF(c);
    switch (c->state) {
    case ST_IDLE:
        if (c->deadline && now >= c->deadline) {
            if (c->in.len) {
                /* the request head did not arrive in time (slow client) */
                c->state = ST_CLOSED;
                const char *r = "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n"
                                "connection: close\r\n\r\n408 Request Timeout\n";
                write_bytes(c->write, r, (Py_ssize_t)strlen(r));
            }
            c->state = ST_CLOSED;
            call_quiet(c->transport, s_close);
        }
        break;
    case ST_CONNECTING:
    case ST_WAITING:
    case ST_STREAMING:
        if (c->ex_deadline && now >= c->ex_deadline) conn_timeout(c, "request timeout");
        else if (c->attempt_deadline && now >= c->attempt_deadline && c->state != ST_STREAMING)
            conn_timeout(c, "upstream request timeout");
        break;
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_exchanges(Conn *c, PyObject *unused) { return PyTuple_New(0); }

static PyObject *Conn_pause_writing(Conn *c, PyObject *unused) {
    c->write_paused = 1;
    Up *u = c->up;
    if (u && !u->paused && !u->closed && u->transport) {
        u->paused = 1;
        call_quiet(u->transport, s_pause_reading);
    }
    Py_RETURN_NONE;
}

static PyObject *Conn_resume_writing(Conn *c, PyObject *unused) {
    c->write_paused = 0;
    Up *u = c->up;
    if (u && u->paused && !u->closed && u->transport) {
        u->paused = 0;
        call_quiet(u->transport, s_resume_reading);
    }
    Py_RETURN_NONE;
}

static PyObject *Conn_get_protocol(Conn *c, void *unused) { return PyUnicode_FromString(c->h2 ? "HTTP/2" : "HTTP/1.1"); }

static PyObject *Conn_get_state(Conn *c, void *unused) {
    static const char *names[] = {"idle", "connecting", "waiting", "streaming", "closed", "handed-over"};
    return PyUnicode_FromString(names[c->state]);
}

static PyObject *Conn_idle(Conn *c, PyObject *unused) {
    return PyBool_FromLong(c->state == ST_IDLE && c->in.len == 0);
}

static PyMethodDef Conn_methods[] = {
    {"idle", (PyCFunction)Conn_idle, METH_NOARGS, "A keep-alive connection between requests (overload sheds these)."},
    {"connection_made", (PyCFunction)Conn_connection_made, METH_O, NULL},
    {"data_received", (PyCFunction)Conn_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)Conn_eof_received, METH_NOARGS, NULL},
    {"connection_lost", (PyCFunction)Conn_connection_lost, METH_O, NULL},
    {"pause_writing", (PyCFunction)Conn_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)Conn_resume_writing, METH_NOARGS, NULL},
    {"connected", (PyCFunction)Conn_connected, METH_O, "An upstream connection opened for this exchange."},
    {"connect_failed", (PyCFunction)Conn_connect_failed, METH_O, "Opening the upstream connection failed."},
    {"retry", (PyCFunction)Conn_retry, METH_O, "A retry's backoff is over (the request's sequence number)."},
    {"check_deadline", (PyCFunction)Conn_check_deadline, METH_O, "Timeouts (the data plane's sweep)."},
    {"exchanges", (PyCFunction)Conn_exchanges, METH_NOARGS, "Python exchanges to sweep: none."},
    {NULL},
};

static PyMemberDef Conn_members[] = {
    {"server", T_OBJECT, offsetof(Conn, server), READONLY, NULL},
    {"transport", T_OBJECT, offsetof(Conn, transport), READONLY, NULL},
    {"client_ip", T_OBJECT, offsetof(Conn, client_ip), READONLY, NULL},
    {"override", T_OBJECT, offsetof(Conn, override), READONLY, "The client from a PROXY protocol header."},
    {"method", T_OBJECT, offsetof(Conn, method), READONLY, NULL},
    {"target", T_OBJECT, offsetof(Conn, target), READONLY, NULL},
    {"host", T_OBJECT, offsetof(Conn, host), READONLY, NULL},
    {"request_id", T_OBJECT, offsetof(Conn, request_id), READONLY, NULL},
    {"xff", T_OBJECT, offsetof(Conn, xff), READONLY, NULL},
    {"ua", T_OBJECT, offsetof(Conn, ua), READONLY, "User-Agent, for the access log."},
    {"up_time", T_DOUBLE, offsetof(Conn, up_time), READONLY, "Seconds from the request sent upstream to its response head; -1: none."},
    {"attempts", T_INT, offsetof(Conn, attempts), READONLY, NULL},
    {"req_head", T_OBJECT, offsetof(Conn, req_head), READONLY, "The request head sent upstream (for access log formats)."},
    {"started", T_DOUBLE, offsetof(Conn, started), READONLY, NULL},
    {NULL},
};

static PyGetSetDef Conn_getset[] = {
    {"state", (getter)Conn_get_state, NULL, NULL, NULL},
    {"protocol", (getter)Conn_get_protocol, NULL, "The client's protocol, for the access log.", NULL},
    {NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "homeplane.gateway.frontends._fastlane.Http1Fast",
    .tp_doc = "Client-side HTTP/1.1 protocol for simple requests; hands anything else to Http1Connection.",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Conn_new,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_methods = Conn_methods,
    .tp_members = Conn_members,
    .tp_getset = Conn_getset,
};

#ifdef HP_HAVE_NGHTTP2
#include "http2.c"
#endif

/* ====================================================================================== */

static PyObject *set_reasons(PyObject *mod, PyObject *t) {
    if (!PyTuple_Check(t)) { PyErr_SetString(PyExc_TypeError, "tuple expected"); return NULL; }
    Py_INCREF(t);
    Py_XSETREF(REASONS, t);
    Py_RETURN_NONE;
}

static PyObject *served_count(PyObject *mod, PyObject *unused) { return PyLong_FromUnsignedLongLong(served); }

static PyMethodDef module_methods[] = {
    {"set_reasons", set_reasons, METH_O, "Reason phrases by status code (a tuple indexed by code)."},
    {"served", served_count, METH_NOARGS, "Requests finished by the fast lane in this process."},
    {NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_fastlane", "HTTP/1.1 fast lane (see _fastlane.c).", -1, module_methods};

/* The attributes this file reads or calls on Python objects, by class: exported as
 * PYTHON_ATTRIBUTES so that a test fails when one is renamed (C would only see a missing
 * attribute, clear the error and hand every request to the slow lane). */
static const char *ATTRS_CLUSTER[] = {"endpoints", "all_available", "pick", "result", NULL};
static const char *ATTRS_ENDPOINT[] = {"active", "fast_idle", NULL};
static const char *ATTRS_SERVER[] = {"fast", NULL};
static const char *ATTRS_HOOKS[] = {
    "opened", "closed", "handoff", "connect", "compression", "later", "finished", "access_log", "idle_timeout",
    "headers_timeout", "h2_opened", "h2_request", "h2_rapid_reset", NULL};
static const char *ATTRS_H2_SINK[] = {"body", "end_body", "gone", "drained", "exchange", NULL};
static const char *ATTRS_ENCODER[] = {"feed", "finish", NULL};

static PyObject *names_tuple(const char **names) {
    Py_ssize_t n = 0;
    while (names[n]) n++;
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) { Py_DECREF(t); return NULL; }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static int add_attributes(PyObject *m) {
    PyObject *d = Py_BuildValue("{sNsNsNsNsNsN}", "Cluster", names_tuple(ATTRS_CLUSTER), "EndpointState",
                                names_tuple(ATTRS_ENDPOINT), "PortServer", names_tuple(ATTRS_SERVER), "Hooks",
                                names_tuple(ATTRS_HOOKS), "Encoder", names_tuple(ATTRS_ENCODER), "NativeH2Stream",
                                names_tuple(ATTRS_H2_SINK));
    if (!d) return -1;
    int r = PyModule_AddObjectRef(m, "PYTHON_ATTRIBUTES", d);
    Py_DECREF(d);
    return r;
}

static int add_bytes(PyObject *m, const char *name, const char *value) {
    PyObject *b = PyBytes_FromString(value);
    if (!b) return -1;
    int r = PyModule_AddObjectRef(m, name, b);
    Py_DECREF(b);
    return r;
}

#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL

PyMODINIT_FUNC PyInit__fastlane(void) {
    init_tchar();
    init_sets();
    id_block();
    srand((unsigned)id_n);  /* retry backoff jitter */
    INTERN(s_write, "write"); INTERN(s_close, "close"); INTERN(s_abort, "abort");
    INTERN(s_pause_reading, "pause_reading"); INTERN(s_resume_reading, "resume_reading");
    INTERN(s_active, "active"); INTERN(s_endpoints, "endpoints"); INTERN(s_all_available, "all_available");
    INTERN(s_pick, "pick"); INTERN(s_fast_idle, "fast_idle"); INTERN(s_result, "result"); INTERN(s_fast, "fast");
    INTERN(s_handoff, "handoff"); INTERN(s_connect, "connect"); INTERN(s_access_log, "access_log");
    INTERN(s_idle_timeout, "idle_timeout"); INTERN(s_headers_timeout, "headers_timeout"); INTERN(s_cancel, "cancel"); INTERN(s_later, "later");
    if (PyType_Ready(&UpType) < 0 || PyType_Ready(&ConnType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&UpType);
    Py_INCREF(&ConnType);
    if (PyModule_AddObject(m, "Upstream", (PyObject *)&UpType) < 0 || PyModule_AddObject(m, "Http1Fast", (PyObject *)&ConnType) < 0 ||
        add_bytes(m, "PATH_SAFE", PATH_SAFE_CHARS) < 0 || add_bytes(m, "HOST_SAFE", HOST_SAFE_CHARS) < 0 ||
        PyModule_AddIntConstant(m, "ROUTE_FIELDS", ROUTE_FIELDS) < 0 || PyModule_AddIntConstant(m, "MATCH_EXACT", MATCH_EXACT) < 0 ||
        PyModule_AddIntConstant(m, "MATCH_PREFIX", MATCH_PREFIX) < 0 || PyModule_AddIntConstant(m, "MATCH_OPAQUE", MATCH_OPAQUE) < 0 ||
        add_attributes(m) < 0 || tls_add_to_module(m) < 0 ||
#ifdef HP_HAVE_NGHTTP2
        h2_add_to_module(m) < 0 || PyModule_AddIntConstant(m, "HAVE_HTTP2", 1) < 0
#else
        PyModule_AddIntConstant(m, "HAVE_HTTP2", 0) < 0
#endif
        ) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
