/* HTTP/2 for clients on libnghttp2: the frames, HPACK, flow control and the protocol's state
 * machine are nghttp2's (no frame is parsed here); this file decides what each stream is.
 *
 * Included by _fastlane.c (one translation unit) so that a stream can be served by the same
 * exchange as an HTTP/1.1 request -- a Conn with ``h2`` set: route lookup in the fast table,
 * endpoint from the cluster, pooled HTTP/1.1 upstream, response relayed -- with no Python code
 * on the way. A stream the fast lane does not serve (a request body, a rule with filters or
 * policies, anything unusual) becomes a Python Exchange whose sink is a small Python object
 * (frontends/http2_native.py) calling this session's primitives: respond, data, end, reset,
 * consume. Both kinds share one connection, as they share one HTTP/1.1 connection.
 *
 * Limits against abuse, as Envoy sets them: a header list over 60 KiB or more than
 * H2_MAX_CONTINUATIONS CONTINUATION frames in one block ends the connection; rapid reset
 * (CVE-2023-44487) is counted as frontends/http2.py counts it (GOAWAY ENHANCE_YOUR_CALM);
 * SETTINGS and PING floods are nghttp2's (its queue of outbound acknowledgements is bounded),
 * and reading stops while the client does not read what it is sent.
 */
#include <nghttp2/nghttp2.h>

#define H2_HIGH_WATER (256 * 1024)   /* response bytes queued per stream before its source pauses */
#define H2_CONN_HIGH_WATER (1 << 20)  /* ... and for the whole connection (a client reading nothing) */
#define H2_MAX_HEADER_LIST (60 * 1024)
#define H2_MAX_CONTINUATIONS 8
#define H2_PREMATURE_LIFETIME 1.0
#define H2_PREMATURE_MIN_STREAMS 500
#define H2_PREMATURE_ABSOLUTE 250

typedef struct H2Stream {
    int32_t id;
    struct H2Stream *prev, *next;
    Buf hdrs;                /* the request's fields: (u32 name length, u32 value length, name, value)... */
    Py_ssize_t hbytes;       /* their size as SETTINGS_MAX_HEADER_LIST_SIZE counts it */
    int nfields;
    Conn *fast;              /* the exchange, when the fast lane serves the stream */
    PyObject *sink;          /* the Python stream otherwise */
    Buf body;                /* response body not yet framed, from body.data + off */
    Buf trailers;            /* trailer fields to send after it (gRPC), encoded as hdrs */
    Py_ssize_t off;
    int eof, answered, head, reset_by_client, source_paused;
    double opened;
} H2Stream;

typedef struct H2Sess {
    PyObject_HEAD
    nghttp2_session *ng;
    PyObject *server, *hooks, *transport, *write, *override, *client_ip, *sni, *scheme, *info, *listener;
    H2Stream *streams;
    Buf out;
    Py_ssize_t queued;       /* response bytes waiting in all the streams' buffers */
    int closed, write_paused, read_paused, access_log, busy, flush_wanted, continuations, closing, fresh;
    long ended, premature, nstreams;
    char closed_flag;  /* closed, as a T_BOOL member */
    double deadline, idle_timeout;
} H2Sess;

#define NV(nm, nl, v, vl) ((nghttp2_nv){(uint8_t *)(nm), (uint8_t *)(v), (size_t)(nl), (size_t)(vl), NGHTTP2_NV_FLAG_NONE})

static PyTypeObject H2SessType;
static PyObject *s_h2_opened, *s_h2_request, *s_body, *s_end_body, *s_gone, *s_drained, *s_closed_name, *s_exchange;

static void h2_flush(H2Sess *s);

/* Stream activity: the idle timeout counts from the last of it (or from the last sweep that
 * found a stream under way). */
static void h2_touch(H2Sess *s, double now) { s->deadline = s->idle_timeout > 0 ? now + s->idle_timeout : 0; }

static H2Stream *h2_stream(H2Sess *s, int32_t id) {
    return s->ng ? (H2Stream *)nghttp2_session_get_stream_user_data(s->ng, id) : NULL;
}

static Py_ssize_t h2_pending(H2Stream *st) { return st->body.len - st->off; }

static void h2_stream_free(H2Sess *s, H2Stream *st) {
    if (st->prev) st->prev->next = st->next;
    else s->streams = st->next;
    if (st->next) st->next->prev = st->prev;
    s->nstreams--;
    s->queued -= h2_pending(st);
    buf_free(&st->hdrs);
    buf_free(&st->body);
    buf_free(&st->trailers);
    Py_XDECREF((PyObject *)st->fast);
    Py_XDECREF(st->sink);
    PyMem_Free(st);
}

static void call_sink(PyObject *sink, PyObject *name) {
    PyObject *r = PyObject_CallMethodNoArgs(sink, name);
    if (!r) PyErr_WriteUnraisable(sink);
    Py_XDECREF(r);
}

/* ---- response bodies: a per-stream buffer that nghttp2 frames as the windows allow ---------- */

/* A stream's source must wait: its own buffer holds enough, or the connection's does and this
 * stream's bytes do not leave either (a stream whose bytes leave as they come -- nothing
 * pending, the socket writable -- goes on, or streams the client leaves unread would stall
 * those it reads). */
static int h2_full(H2Sess *s, H2Stream *st) {
    Py_ssize_t mine = h2_pending(st);
    return mine > H2_HIGH_WATER || (s->queued > H2_CONN_HIGH_WATER && (mine > 0 || s->write_paused));
}

/* The source of a stream's body (its upstream, or the Python exchange) may go on. */
static void h2_source_resume(H2Sess *s, H2Stream *st) {
    Py_ssize_t mine = h2_pending(st);
    if (!st->source_paused || mine > H2_HIGH_WATER / 2 || (s->queued > H2_CONN_HIGH_WATER && (mine > 0 || s->write_paused))) return;
    st->source_paused = 0;
    if (st->fast) {
        Up *u = st->fast->up;
        if (u && u->paused && !u->closed && u->transport) { u->paused = 0; call_quiet(u->transport, s_resume_reading); }
    } else if (st->sink) {
        call_sink(st->sink, s_drained);
    }
}

/* The trailer fields as a HEADERS frame that ends the stream (nghttp2 copies them). */
static int h2_submit_trailers(nghttp2_session *ng, H2Stream *st) {
    int count = 0;
    for (const char *q = st->trailers.data; q < st->trailers.data + st->trailers.len; count++) {
        uint32_t l[2];
        memcpy(l, q, 8);
        q += 8 + l[0] + l[1];
    }
    nghttp2_nv *nv = PyMem_Malloc(sizeof(nghttp2_nv) * (count ? count : 1));
    if (!nv) return -1;
    int k = 0;
    for (const char *q = st->trailers.data; q < st->trailers.data + st->trailers.len; k++) {
        uint32_t l[2];
        memcpy(l, q, 8);
        nv[k] = NV(q + 8, l[0], q + 8 + l[0], l[1]);
        q += 8 + l[0] + l[1];
    }
    int r = nghttp2_submit_trailer(ng, st->id, nv, (size_t)count);
    PyMem_Free(nv);
    st->trailers.len = 0;
    return r;
}

static ssize_t h2_read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags, nghttp2_data_source *src,
                            void *ud) {
    H2Sess *s = ud;
    H2Stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    Py_ssize_t n = h2_pending(st);
    if ((size_t)n > len) n = (Py_ssize_t)len;
    memcpy(buf, st->body.data + st->off, n);
    st->off += n;
    s->queued -= n;
    if (st->off == st->body.len) st->off = st->body.len = 0;
    else if (st->off > 65536 && st->off * 2 > st->body.len) { buf_consume(&st->body, st->off); st->off = 0; }
    if (h2_pending(st) == 0) {
        if (st->eof) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            if (st->trailers.len && h2_submit_trailers(ng, st) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        } else if (n == 0) {
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    h2_source_resume(s, st);
    return n;
}

/* Queue body bytes; returns the bytes now waiting. */
static Py_ssize_t h2_queue(H2Sess *s, H2Stream *st, const char *p, Py_ssize_t n) {
    if (n > 0 && !st->head) {
        if (buf_add(&st->body, p, n) < 0) return -1;
        s->queued += n;
        if (st->answered) nghttp2_session_resume_data(s->ng, st->id);
    }
    return h2_pending(st);
}

static int h2_submit(H2Sess *s, H2Stream *st, nghttp2_nv *nv, size_t n, int has_body) {
    nghttp2_data_provider prd = {.read_callback = h2_read_body};
    st->answered = 1;
    return nghttp2_submit_response(s->ng, st->id, nv, n, has_body && !st->head ? &prd : NULL);
}


/* ---- fast streams: the Conn's hooks (declared in _fastlane.c) ------------------------------- */

static int h2_response_head(Conn *c, int status, const Field *f, int nf, const Field *conn, int nconn, PyObject *compressed,
                            long long cl, int no_body) {
    H2Stream *st = h2_stream(c->h2, c->h2_id);
    if (!st) return 0;  /* the client reset the stream meanwhile */
    Buf names = {0};    /* lower-case names (HTTP/2 requires them), then the status and length digits */
    Py_ssize_t count = compressed ? PyList_GET_SIZE(compressed) : nf;
    nghttp2_nv *nv = PyMem_Malloc(sizeof(nghttp2_nv) * (count + 3));
    Py_ssize_t *at = PyMem_Malloc(sizeof(Py_ssize_t) * (count + 3));
    if (!nv || !at) { PyMem_Free(nv); PyMem_Free(at); return -1; }
    size_t n = 0;
    /* offsets first: the buffer may move while it grows */
    Py_ssize_t status_at = names.len;
    add_dec(&names, status);
    Py_ssize_t status_len = names.len - status_at;
    for (Py_ssize_t i = 0; i < count; i++) {
        at[i] = names.len;
        if (compressed) {
            PyObject *nm = PyTuple_GET_ITEM(PyList_GET_ITEM(compressed, i), 0);
            buf_add(&names, PyBytes_AS_STRING(nm), PyBytes_GET_SIZE(nm));
        } else if (!ieq(f[i].name, f[i].nlen, "content-length") && !is_hop(&f[i], conn, nconn)) {
            add_lower(&names, f[i].name, f[i].nlen);
        } else {
            at[i] = -1;
        }
    }
    Py_ssize_t cl_at = names.len;
    int with_length = cl >= 0 && (no_body ? c->head_only : c->encoder == NULL);
    if (with_length) add_dec(&names, cl);
    Py_ssize_t cl_len = names.len - cl_at;
    if (buf_add(&names, "", 0) < 0 || names.data == NULL) { buf_free(&names); PyMem_Free(nv); PyMem_Free(at); return -1; }
    nv[n++] = NV(":status", 7, names.data + status_at, status_len);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (compressed) {
            PyObject *pair = PyList_GET_ITEM(compressed, i);
            PyObject *v = PyTuple_GET_ITEM(pair, 1);
            nv[n++] = NV(names.data + at[i], PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)), PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
        } else if (at[i] >= 0) {
            nv[n++] = NV(names.data + at[i], f[i].nlen, f[i].value, f[i].vlen);
        }
    }
    if (with_length) nv[n++] = NV("content-length", 14, names.data + cl_at, cl_len);
    PyObject *alt = alt_svc_of(c, f, nf);
    if (alt) nv[n++] = NV("alt-svc", 7, PyBytes_AS_STRING(alt), PyBytes_GET_SIZE(alt));
    int r = h2_submit(c->h2, st, nv, n, !no_body);
    buf_free(&names);
    PyMem_Free(nv);
    PyMem_Free(at);
    if (r != 0) return -1;
    h2_flush(c->h2);
    return 0;
}

static void h2_pause_upstream(H2Stream *st) {
    Up *u = st->fast ? st->fast->up : NULL;
    if (u && !u->paused && !u->closed && u->transport) {
        st->source_paused = 1;
        u->paused = 1;
        call_quiet(u->transport, s_pause_reading);
    }
}

/* The exchange relayed body bytes into c->out: they become the stream's. When the client's
 * windows do not keep up, its upstream stops being read for a while; when the connection's
 * queue is full, every fast stream's upstream does (else each would add a read's worth). */
static void h2_stream_out(Conn *c) {
    H2Sess *s = c->h2;
    H2Stream *st = h2_stream(s, c->h2_id);
    if (st && c->out.len) {
        h2_queue(s, st, c->out.data, c->out.len);
        if (s->queued > H2_CONN_HIGH_WATER) {
            for (H2Stream *x = s->streams; x; x = x->next)
                if (h2_pending(x) > 0 || s->write_paused) h2_pause_upstream(x);
        } else if (h2_full(s, st)) {
            h2_pause_upstream(st);
        }
    }
    c->out.len = 0;
    h2_flush(s);
}

/* An upstream connection starts serving a stream: read it only if the client keeps up. */
static void h2_upstream_attached(Conn *c) {
    H2Stream *st = h2_stream(c->h2, c->h2_id);
    if (st && (c->h2->write_paused || h2_full(c->h2, st))) h2_pause_upstream(st);
}

static void h2_stream_done(Conn *c, int abort) {
    H2Stream *st = h2_stream(c->h2, c->h2_id);
    if (!st) return;
    if (abort || !st->answered) {
        nghttp2_submit_rst_stream(c->h2->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    } else {
        st->eof = 1;
        nghttp2_session_resume_data(c->h2->ng, st->id);
    }
    h2_flush(c->h2);
}

static void h2_simple(Conn *c, int status, const char *body) {
    H2Stream *st = h2_stream(c->h2, c->h2_id);
    if (!st) return;
    char digits[8], length[24];
    Py_ssize_t blen = (Py_ssize_t)strlen(body);
    snprintf(digits, sizeof digits, "%d", status);
    snprintf(length, sizeof length, "%zd", blen + 1);
    nghttp2_nv nv[] = {
        NV(":status", 7, digits, strlen(digits)),
        NV("content-type", 12, "text/plain", 10),
        NV("content-length", 14, length, strlen(length)),
        NV("alt-svc", 7, "", 0),
    };
    PyObject *alt = alt_svc_of(c, NULL, 0);
    if (alt) nv[3] = NV("alt-svc", 7, PyBytes_AS_STRING(alt), PyBytes_GET_SIZE(alt));
    h2_queue(c->h2, st, body, blen);
    h2_queue(c->h2, st, "\n", 1);
    st->eof = 1;
    if (!st->head) c->bytes_out = blen + 1;
    h2_submit(c->h2, st, nv, alt ? 4 : 3, 1);
    h2_flush(c->h2);
}

/* ---- a new stream: the fast lane's, or Python's -------------------------------------------- */

typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

/* Serve the stream here when it is a plain request: 1 taken, 0 for Python. */
static int h2_fast_start(H2Sess *s, H2Stream *st, Span method, Span path, Span authority) {
    if (!method.p || !path.p || !authority.p) return 0;
    int known = 0;
    for (const char **m = METHODS; *m; m++)
        if ((Py_ssize_t)strlen(*m) == method.n && memcmp(*m, method.p, method.n) == 0) { known = 1; break; }
    if (!known || path.n == 0 || path.p[0] != '/' || path.n > MAX_URL || st->hbytes > MAX_HEAD) return 0;
    for (Py_ssize_t i = 0; i < path.n; i++)
        if ((unsigned char)path.p[i] <= 0x20 || (unsigned char)path.p[i] >= 0x7f) return 0;
    /* fields the lane treats specially, each at most once; a Host field next to :authority
     * (which wins is the Python lane's business), a body length or Expect go to Python */
    Field xff = {0}, rid = {0}, ae = {0}, ua = {0};
    int ncookies = 0;
    const char *q = st->hdrs.data, *end = st->hdrs.data + st->hdrs.len;
    while (q < end) {
        uint32_t nl, vl;
        memcpy(&nl, q, 4);
        memcpy(&vl, q + 4, 4);
        Field x = {q + 8, nl, q + 8 + nl, vl};
        q += 8 + nl + vl;
        if (nl && x.name[0] == ':') continue;
        Field *slot = NULL;
        if (ieq(x.name, x.nlen, "x-forwarded-for")) slot = &xff;
        else if (ieq(x.name, x.nlen, "x-request-id")) slot = &rid;
        else if (ieq(x.name, x.nlen, "accept-encoding")) slot = &ae;
        else if (ieq(x.name, x.nlen, "host") || ieq(x.name, x.nlen, "content-length") || ieq(x.name, x.nlen, "expect")) return 0;
        else if (ieq(x.name, x.nlen, "cookie")) ncookies++;
        else if (!ua.name && ieq(x.name, x.nlen, "user-agent")) ua = x;  /* for the access log; the field is forwarded as it is */
        if (slot) {
            if (slot->name) return 0;
            *slot = x;
        }
    }
    Conn *c = (Conn *)ConnType.tp_alloc(&ConnType, 0);
    if (!c) { PyErr_Clear(); return 0; }
    c->server = Py_NewRef(s->server);
    c->hooks = Py_NewRef(s->hooks);
    c->client_ip = Py_NewRef(s->client_ip);
    c->sni = Py_NewRef(s->sni);
    c->scheme = Py_NewRef(s->scheme);
    c->override = Py_NewRef(s->override);
    c->access_log = s->access_log;
    c->state = ST_IDLE;
    const char *qm = memchr(path.p, '?', path.n);
    PyObject *host, *route, *ep;
    if (!route_request(c, authority.p, authority.n, path.p, qm ? qm - path.p : path.n, &host, &route, &ep)) {
        Py_DECREF(c);
        return 0;
    }
    c->h2 = (H2Sess *)Py_NewRef((PyObject *)s);
    c->h2_id = st->id;
    st->fast = c;
    st->head = method.n == 4 && memcmp(method.p, "HEAD", 4) == 0;
    exchange_begin(c, route, ep, st->head, ae.name ? &ae : NULL, 0);
    /* the upstream request: Host from :authority first, the fields in their order, then the
     * forwarding fields */
    Buf h = {0};
    buf_add(&h, method.p, method.n);
    buf_add(&h, " ", 1);
    buf_add(&h, path.p, path.n);
    buf_str(&h, " HTTP/1.1\r\nhost: ");
    buf_add(&h, authority.p, authority.n);
    buf_str(&h, "\r\n");
    for (q = st->hdrs.data; q < end;) {
        uint32_t nl, vl;
        memcpy(&nl, q, 4);
        memcpy(&vl, q + 4, 4);
        Field x = {q + 8, nl, q + 8 + nl, vl};
        q += 8 + nl + vl;
        if ((nl && x.name[0] == ':') || x.name == xff.name || x.name == rid.name || is_hop(&x, NULL, 0) ||
            ieq(x.name, x.nlen, "x-forwarded-proto") || ieq(x.name, x.nlen, "x-forwarded-host") || ieq(x.name, x.nlen, "cookie"))
            continue;
        buf_add(&h, x.name, x.nlen);
        buf_add(&h, ": ", 2);
        buf_add(&h, x.value, x.vlen);
        buf_add(&h, "\r\n", 2);
    }
    if (ncookies) {
        /* cookies joined into one field after the others (RFC 9113 8.2.3), as the h2 library
         * gives them to the Python lane */
        buf_str(&h, "cookie: ");
        int first = 1;
        for (q = st->hdrs.data; q < end;) {
            uint32_t nl, vl;
            memcpy(&nl, q, 4);
            memcpy(&vl, q + 4, 4);
            if (ieq(q + 8, nl, "cookie")) {
                if (!first) buf_add(&h, "; ", 2);
                buf_add(&h, q + 8 + nl, vl);
                first = 0;
            }
            q += 8 + nl + vl;
        }
        buf_str(&h, "\r\n");
    }
    Field host_field = {NULL, 0, authority.p, authority.n};
    Py_ssize_t rid_at, rid_len;
    add_forwarding(c, &h, xff.name ? &xff : NULL, &host_field, rid.name ? &rid : NULL, &rid_at, &rid_len);
    if (buf_str(&h, "\r\n") < 0) { buf_free(&h); conn_simple(c, 503, "out of memory"); return 1; }
    c->req_head = PyBytes_FromStringAndSize(h.data, h.len);
    keep_for_log(c, method.p, method.n, path.p, path.n, &h, rid_at, rid_len, xff.name ? &xff : NULL, ua.name ? &ua : NULL, host);
    buf_free(&h);
    if (!c->req_head) { PyErr_Clear(); conn_simple(c, 503, "out of memory"); return 1; }
    conn_send(c, 0);
    return 1;
}

/* A stream for the Python lane: hooks.h2_request makes its Exchange and returns the sink. */
static void h2_python_start(H2Sess *s, H2Stream *st, Span method, Span path, int ended) {
    PyObject *fields = PyList_New(0);
    for (const char *q = st->hdrs.data; fields && q < st->hdrs.data + st->hdrs.len;) {
        uint32_t nl, vl;
        memcpy(&nl, q, 4);
        memcpy(&vl, q + 4, 4);
        PyObject *pair = Py_BuildValue("(y#y#)", q + 8, (Py_ssize_t)nl, q + 8 + nl, (Py_ssize_t)vl);
        if (!pair || PyList_Append(fields, pair) < 0) Py_CLEAR(fields);
        Py_XDECREF(pair);
        q += 8 + nl + vl;
    }
    buf_free(&st->hdrs);
    st->head = method.p && method.n == 4 && memcmp(method.p, "HEAD", 4) == 0;
    PyObject *sink = fields ? PyObject_CallMethod(s->hooks, "h2_request", "OiOO", (PyObject *)s, st->id, fields, ended ? Py_True : Py_False)
                            : NULL;
    Py_XDECREF(fields);
    if (!sink || sink == Py_None) {
        if (!sink) PyErr_WriteUnraisable(s->hooks);
        Py_XDECREF(sink);
        if (h2_stream(s, st->id) == st && !st->answered)
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (h2_stream(s, st->id) == st) st->sink = sink;  /* (else the stream already ended) */
    else Py_DECREF(sink);
}

static void h2_start(H2Sess *s, H2Stream *st, int ended) {
    Span method = {0}, path = {0}, authority = {0};
    for (const char *q = st->hdrs.data; q < st->hdrs.data + st->hdrs.len;) {
        uint32_t nl, vl;
        memcpy(&nl, q, 4);
        memcpy(&vl, q + 4, 4);
        Span v = {q + 8 + nl, vl};
        if (ieq(q + 8, nl, ":method")) method = v;
        else if (ieq(q + 8, nl, ":path")) path = v;
        else if (ieq(q + 8, nl, ":authority")) authority = v;
        q += 8 + nl + vl;
    }
    /* a Host field naming another server than :authority: malformed (RFC 9113 8.3.1), or the
     * routing of one could differ from what the other names */
    for (const char *q = st->hdrs.data; authority.p && q < st->hdrs.data + st->hdrs.len;) {
        uint32_t nl, vl;
        memcpy(&nl, q, 4);
        memcpy(&vl, q + 4, 4);
        if (ieq(q + 8, nl, "host") && !ieq_n(q + 8 + nl, vl, authority.p, authority.n)) {
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
            return;
        }
        q += 8 + nl + vl;
    }
    if (ended && h2_fast_start(s, st, method, path, authority)) {
        buf_free(&st->hdrs);
        return;
    }
    h2_python_start(s, st, method, path, ended);
}

/* ---- nghttp2 callbacks ---------------------------------------------------------------------- */

static int cb_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud) {
    H2Sess *s = ud;
    if (hd->type == NGHTTP2_HEADERS) s->continuations = 0;
    else if (hd->type == NGHTTP2_CONTINUATION && ++s->continuations > H2_MAX_CONTINUATIONS) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
    H2Sess *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    H2Stream *st = PyMem_Calloc(1, sizeof(H2Stream));
    if (!st) return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->id = frame->hd.stream_id;
    st->opened = now_mono();
    h2_touch(s, st->opened);
    st->next = s->streams;
    if (s->streams) s->streams->prev = st;
    s->streams = st;
    s->nstreams++;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    return 0;
}

static int cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen, const uint8_t *value,
                     size_t vlen, uint8_t flags, void *ud) {
    H2Stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  /* request trailers are not forwarded */
    st->hbytes += (Py_ssize_t)(nlen + vlen + 32);
    if (st->hbytes > H2_MAX_HEADER_LIST) return NGHTTP2_ERR_CALLBACK_FAILURE;  /* ends the connection */
    uint32_t l[2] = {(uint32_t)nlen, (uint32_t)vlen};
    if (buf_add(&st->hdrs, (const char *)l, 8) < 0 || buf_add(&st->hdrs, (const char *)name, nlen) < 0 ||
        buf_add(&st->hdrs, (const char *)value, vlen) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->nfields++;
    return 0;
}

static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
    H2Sess *s = ud;
    H2Stream *st = frame->hd.stream_id ? nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id) : NULL;
    if (!st) return 0;
    int ended = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) h2_start(s, st, ended);
        else if (ended && st->sink) call_sink(st->sink, s_end_body);  /* after trailers */
        break;
    case NGHTTP2_DATA:
        if (ended && st->sink) call_sink(st->sink, s_end_body);
        break;
    case NGHTTP2_RST_STREAM:
        st->reset_by_client = 1;
        break;
    }
    return 0;
}

static int cb_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud) {
    H2Stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st && st->sink) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
        PyObject *r = b ? PyObject_CallMethodOneArg(st->sink, s_body, b) : NULL;
        Py_XDECREF(b);
        if (!r) PyErr_WriteUnraisable(st->sink);
        int now = r == NULL || PyObject_IsTrue(r);  /* else acknowledged when the upstream takes more */
        Py_XDECREF(r);
        if (now) nghttp2_session_consume(ng, id, len);
        return 0;
    }
    nghttp2_session_consume_connection(ng, len);  /* a body nobody reads any more */
    return 0;
}

/* Rapid reset: too many streams reset by the client before their answer, within a second. */
static int h2_too_many_resets(H2Sess *s) {
    long n = s->ended, bad = s->premature;
    return bad >= H2_PREMATURE_ABSOLUTE || (n >= H2_PREMATURE_MIN_STREAMS && bad * 2 >= n);
}

/* The client reset the stream, or the connection ended: the exchange in flight is abandoned.
 * (A stream that closes because its answer went out needs nothing: the exchange finishes
 * on its own path, and a Conn finishing then finds no stream.) */
static void h2_stream_aborted(H2Stream *st) {
    Conn *c = st->fast;
    if (c && (c->state == ST_CONNECTING || c->state == ST_WAITING || c->state == ST_STREAMING)) {
        if (!c->status) c->status = 499;
        c->state = ST_CLOSED;
        conn_finish(c, 0, "client closed", 0);
    }
    if (st->sink) call_sink(st->sink, s_gone);
}

static int cb_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud) {
    H2Sess *s = ud;
    H2Stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st) return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    s->ended++;
    if (st->reset_by_client && !st->answered && now_mono() - st->opened <= H2_PREMATURE_LIFETIME) s->premature++;
    if (st->reset_by_client || error_code != NGHTTP2_NO_ERROR) h2_stream_aborted(st);
    h2_touch(s, now_mono());
    h2_stream_free(s, st);
    if (!s->closing && h2_too_many_resets(s)) {
        s->closing = 1;
        PyObject *r = PyObject_CallMethod(s->hooks, "h2_rapid_reset", "Oll", (PyObject *)s, s->premature, s->ended);
        if (!r) PyErr_WriteUnraisable(s->hooks);
        Py_XDECREF(r);
        static const char why[] = "too_many_premature_resets";
        nghttp2_submit_goaway(ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(ng), NGHTTP2_ENHANCE_YOUR_CALM,
                              (const uint8_t *)why, sizeof why - 1);
    }
    return 0;
}

/* ---- the session ----------------------------------------------------------------------------- */

static void h2_close(H2Sess *s) {
    if (s->closed || !s->transport) return;
    call_quiet(s->transport, s_close);
}

/* Frames out: everything nghttp2 has to send, in one write. Deferred while nghttp2 is in a
 * callback (it must not be entered again) and while the client does not read. */
static void h2_flush(H2Sess *s) {
    if (!s->ng || s->closed) return;
    if (s->busy) { s->flush_wanted = 1; return; }
    s->busy = 1;
    do {
        s->flush_wanted = 0;
        while (!s->write_paused) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(s->ng, &data);
            if (n <= 0) {
                if (n < 0) s->closing = 1;
                break;
            }
            buf_add(&s->out, (const char *)data, n);  /* (bounded: the streams' queues are) */
        }
        if (s->out.len) {
            write_bytes(s->write, s->out.data, s->out.len);
            s->out.len = 0;
        }
    } while (s->flush_wanted && !s->write_paused);
    s->busy = 0;
    for (H2Stream *st = s->streams; st; st = st->next) h2_source_resume(s, st);
    if (s->closing || (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))) h2_close(s);
}

static PyObject *H2Sess_new(PyTypeObject *t, PyObject *args, PyObject *kw) {
    PyObject *server, *hooks, *override = Py_None;
    int fresh = 1;
    if (!PyArg_ParseTuple(args, "OO|Op", &server, &hooks, &override, &fresh)) return NULL;
    H2Sess *s = (H2Sess *)t->tp_alloc(t, 0);
    if (!s) return NULL;
    s->fresh = fresh;  /* a connection not admitted yet (limits apply) */
    s->server = Py_NewRef(server);
    s->hooks = Py_NewRef(hooks);
    s->override = Py_NewRef(override);
    s->info = Py_NewRef(Py_None);
    s->listener = Py_NewRef(Py_None);
    return (PyObject *)s;
}

static void h2_end_all(H2Sess *s) {
    while (s->streams) {
        H2Stream *st = s->streams;
        if (s->ng) nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        h2_stream_aborted(st);
        h2_stream_free(s, st);
    }
}

static int H2Sess_traverse(H2Sess *s, visitproc visit, void *arg) {
    Py_VISIT(s->server);
    Py_VISIT(s->hooks);
    Py_VISIT(s->transport);
    Py_VISIT(s->write);
    Py_VISIT(s->info);
    Py_VISIT(s->listener);
    Py_VISIT(s->override);
    Py_VISIT(s->client_ip);
    Py_VISIT(s->sni);
    Py_VISIT(s->scheme);
    for (H2Stream *st = s->streams; st; st = st->next) {
        Py_VISIT((PyObject *)st->fast);
        Py_VISIT(st->sink);
    }
    return 0;
}

static int H2Sess_clear(H2Sess *s) {
    while (s->streams) {
        H2Stream *st = s->streams;
        if (s->ng) nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        h2_stream_free(s, st);
    }
    Py_CLEAR(s->server);
    Py_CLEAR(s->hooks);
    Py_CLEAR(s->transport);
    Py_CLEAR(s->write);
    Py_CLEAR(s->override);
    Py_CLEAR(s->client_ip);
    Py_CLEAR(s->sni);
    Py_CLEAR(s->scheme);
    Py_CLEAR(s->info);
    Py_CLEAR(s->listener);
    return 0;
}

static void H2Sess_dealloc(H2Sess *s) {
    PyObject_GC_UnTrack(s);
    H2Sess_clear(s);
    if (s->ng) nghttp2_session_del(s->ng);
    buf_free(&s->out);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static nghttp2_session_callbacks *h2_callbacks;

static PyObject *H2Sess_connection_made(H2Sess *s, PyObject *transport) {
    Py_XSETREF(s->transport, Py_NewRef(transport));
    Py_XSETREF(s->write, PyObject_GetAttr(transport, s_write));
    if (!s->write) return NULL;
    /* (client ip, sni, scheme, max streams, stream window, connection window, idle timeout, access log) */
    PyObject *r = PyObject_CallMethodObjArgs(s->hooks, s_h2_opened, (PyObject *)s, transport, s->fresh ? Py_True : Py_False, NULL);
    if (!r) return NULL;
    unsigned int streams, swin, cwin;
    int log;
    PyObject *ip, *sni, *scheme;
    if (!PyArg_ParseTuple(r, "OOOIIIdp", &ip, &sni, &scheme, &streams, &swin, &cwin, &s->idle_timeout, &log)) { Py_DECREF(r); return NULL; }
    s->client_ip = Py_NewRef(ip);
    s->sni = Py_NewRef(sni);
    s->scheme = Py_NewRef(scheme);
    s->access_log = log;
    Py_DECREF(r);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) return PyErr_NoMemory();
    nghttp2_option_set_no_auto_window_update(opt, 1);  /* request bodies are acknowledged as the upstream takes them */
    nghttp2_option_set_max_settings(opt, 32);
    int rv = nghttp2_session_server_new2(&s->ng, h2_callbacks, s, opt);
    nghttp2_option_del(opt);
    if (rv != 0) return PyErr_NoMemory();
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, swin},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_MAX_HEADER_LIST},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, 3);
    if (cwin > 65535) nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)cwin);
    s->deadline = s->idle_timeout > 0 ? now_mono() + s->idle_timeout : 0;
    h2_flush(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_data_received(H2Sess *s, PyObject *data) {
    if (!s->ng || s->closed) Py_RETURN_NONE;
    Py_buffer b;
    if (PyObject_GetBuffer(data, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_INCREF(s);
    s->busy = 1;
    ssize_t rv = nghttp2_session_mem_recv(s->ng, b.buf, (size_t)b.len);
    s->busy = 0;
    PyBuffer_Release(&b);
    if (rv < 0) {
        /* not HTTP/2 (a bad preface), a flood, a header list over the limit: GOAWAY, then close */
        if (rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC) nghttp2_session_terminate_session(s->ng, NGHTTP2_PROTOCOL_ERROR);
        s->closing = 1;
    }
    h2_flush(s);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_eof_received(H2Sess *s, PyObject *unused) { Py_RETURN_NONE; }

static PyObject *H2Sess_connection_lost(H2Sess *s, PyObject *exc) {
    if (s->closed) Py_RETURN_NONE;
    s->closed = 1;
    s->closed_flag = 1;
    Py_INCREF(s);
    PyObject *r = PyObject_CallMethodOneArg(s->hooks, s_closed_name, (PyObject *)s);
    if (!r) PyErr_WriteUnraisable(s->hooks);
    Py_XDECREF(r);
    h2_end_all(s);
    if (s->ng) { nghttp2_session_del(s->ng); s->ng = NULL; }
    Py_CLEAR(s->write);
    Py_CLEAR(s->transport);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_pause_writing(H2Sess *s, PyObject *unused) {
    /* a client that does not read: stop reading it too (its PINGs and SETTINGS make answers),
     * and the upstreams that would only add to what waits for it */
    s->write_paused = 1;
    for (H2Stream *st = s->streams; st; st = st->next) h2_pause_upstream(st);
    if (!s->read_paused && s->transport) { s->read_paused = 1; call_quiet(s->transport, s_pause_reading); }
    Py_RETURN_NONE;
}

static PyObject *H2Sess_resume_writing(H2Sess *s, PyObject *unused) {
    s->write_paused = 0;
    if (s->read_paused && s->transport && !s->closed) { s->read_paused = 0; call_quiet(s->transport, s_resume_reading); }
    h2_flush(s);
    Py_RETURN_NONE;
}

/* Whether a stream has an exchange or an answer under way. A stream whose header block never
 * ends, or whose answer is complete while the client never ends its side, is not: the
 * connection counts as idle and ends after the idle timeout (as frontends/http2.py does). */
static int h2_stream_busy(H2Stream *st) {
    if (st->answered) return !st->eof || h2_pending(st) > 0;
    if (st->fast) return st->fast->state == ST_CONNECTING || st->fast->state == ST_WAITING || st->fast->state == ST_STREAMING;
    return st->sink != NULL;
}

static int h2_busy(H2Sess *s) {
    for (H2Stream *st = s->streams; st; st = st->next)
        if (h2_stream_busy(st)) return 1;
    return 0;
}

static PyObject *H2Sess_check_deadline(H2Sess *s, PyObject *now_obj) {
    double now = PyFloat_AsDouble(now_obj);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    if (!s->ng || s->closed) Py_RETURN_NONE;
    Py_INCREF(s);
    if (!h2_busy(s)) {
        if (s->deadline && now >= s->deadline) {
            nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);  /* GOAWAY, then close */
            s->closing = 1;
            h2_flush(s);
        }
    } else {
        s->deadline = s->idle_timeout > 0 ? now + s->idle_timeout : 0;
        /* the fast streams' timeouts (Python's exchanges are swept through exchanges()) */
        int n = 0;
        for (H2Stream *st = s->streams; st; st = st->next) n += st->fast != NULL;
        Conn **fast = n ? PyMem_Malloc(sizeof(Conn *) * n) : NULL;
        int k = 0;
        for (H2Stream *st = s->streams; fast && st; st = st->next)
            if (st->fast) fast[k++] = (Conn *)Py_NewRef((PyObject *)st->fast);
        for (int i = 0; i < k; i++) {
            PyObject *r = Conn_check_deadline(fast[i], now_obj);
            if (!r) PyErr_WriteUnraisable((PyObject *)fast[i]);
            Py_XDECREF(r);
            Py_DECREF(fast[i]);
        }
        PyMem_Free(fast);
    }
    Py_DECREF(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_exchanges(H2Sess *s, PyObject *unused) {
    PyObject *out = PyList_New(0);
    for (H2Stream *st = s->streams; out && st; st = st->next) {
        if (!st->sink) continue;
        PyObject *ex = PyObject_GetAttr(st->sink, s_exchange);
        if (ex && ex != Py_None && PyList_Append(out, ex) < 0) Py_CLEAR(out);
        Py_XDECREF(ex);
        PyErr_Clear();
    }
    return out;
}

static PyObject *H2Sess_idle(H2Sess *s, PyObject *unused) { return PyBool_FromLong(!h2_busy(s)); }

/* ---- primitives for the Python streams (frontends/http2_native.py) ---------------------- */

/* A Python stream (its sink may not be stored yet: the exchange can answer while it starts). */
static H2Stream *h2_arg_stream(H2Sess *s, int id) {
    H2Stream *st = h2_stream(s, id);
    return st && !st->fast ? st : NULL;
}

static PyObject *H2Sess_respond(H2Sess *s, PyObject *args) {
    int id, status, has_body;
    PyObject *headers, *length;
    if (!PyArg_ParseTuple(args, "iiOOp", &id, &status, &headers, &length, &has_body)) return NULL;
    H2Stream *st = h2_arg_stream(s, id);
    if (!st || st->answered) Py_RETURN_NONE;
    PyObject *seq = PySequence_Fast(headers, "headers must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    nghttp2_nv *nv = PyMem_Malloc(sizeof(nghttp2_nv) * (n + 2));
    Buf names = {0};
    Py_ssize_t *at = PyMem_Malloc(sizeof(Py_ssize_t) * (n + 1));
    if (!nv || !at) { Py_DECREF(seq); PyMem_Free(nv); PyMem_Free(at); return PyErr_NoMemory(); }
    char digits[8], len_digits[24];
    snprintf(digits, sizeof digits, "%d", status);
    size_t k = 0;
    nv[k++] = NV(":status", 7, digits, strlen(digits));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        at[i] = -1;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1)))
            continue;
        PyObject *nm = PyTuple_GET_ITEM(pair, 0);
        Field x = {PyBytes_AS_STRING(nm), PyBytes_GET_SIZE(nm), NULL, 0};
        if (is_hop(&x, NULL, 0) && !ieq(x.name, x.nlen, "te") && !ieq(x.name, x.nlen, "trailer")) continue;  /* connection-specific */
        at[i] = names.len;
        add_lower(&names, x.name, x.nlen);
    }
    buf_add(&names, "", 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (at[i] < 0) continue;
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *v = PyTuple_GET_ITEM(pair, 1);
        nv[k++] = NV(names.data + at[i], PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)), PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    }
    long long len = length == Py_None ? -1 : PyLong_AsLongLong(length);
    if (len >= 0) {
        snprintf(len_digits, sizeof len_digits, "%lld", len);
        nv[k++] = NV("content-length", 14, len_digits, strlen(len_digits));
    }
    PyErr_Clear();
    int body = has_body && len != 0;
    if (!body) st->eof = 1;
    int rv = h2_submit(s, st, nv, k, body);
    buf_free(&names);
    PyMem_Free(nv);
    PyMem_Free(at);
    Py_DECREF(seq);
    if (rv == 0 && h2_pending(st)) nghttp2_session_resume_data(s->ng, st->id);
    h2_flush(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_data(H2Sess *s, PyObject *args) {
    int id;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iy*", &id, &b)) return NULL;
    H2Stream *st = h2_arg_stream(s, id);
    if (st && !st->eof) {
        h2_queue(s, st, b.buf, b.len);
        if (h2_full(s, st)) st->source_paused = 1;  /* the sink pauses its exchange; drained() resumes it */
    }
    PyBuffer_Release(&b);
    h2_flush(s);
    /* whether the sink must pause, after the flush (which may have drained the stream already,
     * and may have ended it) */
    st = h2_arg_stream(s, id);
    return PyBool_FromLong(st && st->source_paused);
}

static PyObject *H2Sess_trailers(H2Sess *s, PyObject *args) {
    int id;
    PyObject *fields;
    if (!PyArg_ParseTuple(args, "iO", &id, &fields)) return NULL;
    H2Stream *st = h2_arg_stream(s, id);
    PyObject *seq = PySequence_Fast(fields, "trailers must be a sequence");
    if (!seq) return NULL;
    for (Py_ssize_t i = 0; st && !st->head && !st->eof && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1)))
            continue;
        PyObject *nm = PyTuple_GET_ITEM(pair, 0), *v = PyTuple_GET_ITEM(pair, 1);
        Field x = {PyBytes_AS_STRING(nm), PyBytes_GET_SIZE(nm), NULL, 0};
        if (is_hop(&x, NULL, 0)) continue;  /* connection-specific fields are not HTTP/2's */
        uint32_t l[2] = {(uint32_t)PyBytes_GET_SIZE(nm), (uint32_t)PyBytes_GET_SIZE(v)};
        buf_add(&st->trailers, (const char *)l, 8);
        add_lower(&st->trailers, x.name, x.nlen);
        buf_add(&st->trailers, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_end(H2Sess *s, PyObject *arg) {
    H2Stream *st = h2_arg_stream(s, (int)PyLong_AsLong(arg));
    PyErr_Clear();
    if (st && st->answered && !st->eof) {
        st->eof = 1;
        nghttp2_session_resume_data(s->ng, st->id);
    }
    h2_flush(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_reset(H2Sess *s, PyObject *arg) {
    H2Stream *st = h2_arg_stream(s, (int)PyLong_AsLong(arg));
    PyErr_Clear();
    if (st) nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    h2_flush(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_consume(H2Sess *s, PyObject *args) {
    int id;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "in", &id, &n)) return NULL;
    if (s->ng && n > 0) {
        if (h2_stream(s, id)) nghttp2_session_consume(s->ng, id, (size_t)n);
        else nghttp2_session_consume_connection(s->ng, (size_t)n);
        h2_flush(s);
    }
    Py_RETURN_NONE;
}

static PyObject *H2Sess_flush(H2Sess *s, PyObject *unused) {
    h2_flush(s);
    Py_RETURN_NONE;
}

static PyObject *H2Sess_goaway(H2Sess *s, PyObject *unused) {
    /* no new streams (a drain): the ones open finish */
    if (s->ng && !s->closed) {
        nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_NO_ERROR, NULL, 0);
        h2_flush(s);
    }
    Py_RETURN_NONE;
}

static PyMethodDef H2Sess_methods[] = {
    {"connection_made", (PyCFunction)H2Sess_connection_made, METH_O, NULL},
    {"data_received", (PyCFunction)H2Sess_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)H2Sess_eof_received, METH_NOARGS, NULL},
    {"connection_lost", (PyCFunction)H2Sess_connection_lost, METH_O, NULL},
    {"pause_writing", (PyCFunction)H2Sess_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)H2Sess_resume_writing, METH_NOARGS, NULL},
    {"check_deadline", (PyCFunction)H2Sess_check_deadline, METH_O, "Timeouts (the data plane's sweep)."},
    {"exchanges", (PyCFunction)H2Sess_exchanges, METH_NOARGS, "The Python streams' exchanges, for the sweep."},
    {"idle", (PyCFunction)H2Sess_idle, METH_NOARGS, "No stream open."},
    {"respond", (PyCFunction)H2Sess_respond, METH_VARARGS, "respond(stream, status, headers, length|None, has_body)"},
    {"data", (PyCFunction)H2Sess_data, METH_VARARGS, "data(stream, bytes) -> whether the exchange must pause (drained() follows)"},
    {"trailers", (PyCFunction)H2Sess_trailers, METH_VARARGS, "trailers(stream, fields): sent after the body"},
    {"end", (PyCFunction)H2Sess_end, METH_O, "end(stream): the body is complete"},
    {"reset", (PyCFunction)H2Sess_reset, METH_O, "reset(stream): RST_STREAM INTERNAL_ERROR"},
    {"consume", (PyCFunction)H2Sess_consume, METH_VARARGS, "consume(stream, n): request body bytes taken (WINDOW_UPDATE)"},
    {"flush", (PyCFunction)H2Sess_flush, METH_NOARGS, NULL},
    {"goaway", (PyCFunction)H2Sess_goaway, METH_NOARGS, "GOAWAY NO_ERROR: open streams finish, no new ones"},
    {NULL},
};

static PyMemberDef H2Sess_members[] = {
    {"server", T_OBJECT, offsetof(H2Sess, server), READONLY, NULL},
    {"transport", T_OBJECT, offsetof(H2Sess, transport), READONLY, NULL},
    {"override", T_OBJECT, offsetof(H2Sess, override), READONLY, "The client from a PROXY protocol header."},
    {"client_ip", T_OBJECT, offsetof(H2Sess, client_ip), READONLY, NULL},
    {"info", T_OBJECT, offsetof(H2Sess, info), 0, "The connection's ConnInfo (set by hooks.h2_opened)."},
    {"listener", T_OBJECT, offsetof(H2Sess, listener), 0, "The listener its SNI chose, or None."},
    {"closed", T_BOOL, offsetof(H2Sess, closed_flag), READONLY, "The connection is lost."},
    {"queued", T_PYSSIZET, offsetof(H2Sess, queued), READONLY, "Response bytes waiting for the client's windows."},
    {"premature_resets", T_LONG, offsetof(H2Sess, premature), READONLY, NULL},
    {"streams_ended", T_LONG, offsetof(H2Sess, ended), READONLY, NULL},
    {NULL},
};

static PyTypeObject H2SessType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "homeplane.gateway.frontends._fastlane.Http2Fast",
    .tp_doc = "Client-side HTTP/2 on nghttp2; plain streams served here, others by Python exchanges.",
    .tp_basicsize = sizeof(H2Sess),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = H2Sess_new,
    .tp_dealloc = (destructor)H2Sess_dealloc,
    .tp_traverse = (traverseproc)H2Sess_traverse,
    .tp_clear = (inquiry)H2Sess_clear,
    .tp_methods = H2Sess_methods,
    .tp_members = H2Sess_members,
};

static int h2_add_to_module(PyObject *m) {
    if (nghttp2_session_callbacks_new(&h2_callbacks) != 0) return -1;
    nghttp2_session_callbacks_set_on_begin_frame_callback(h2_callbacks, cb_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(h2_callbacks, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(h2_callbacks, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(h2_callbacks, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2_callbacks, cb_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(h2_callbacks, cb_stream_close);
    if (!(s_h2_opened = PyUnicode_InternFromString("h2_opened")) || !(s_h2_request = PyUnicode_InternFromString("h2_request")) ||
        !(s_body = PyUnicode_InternFromString("body")) || !(s_end_body = PyUnicode_InternFromString("end_body")) ||
        !(s_gone = PyUnicode_InternFromString("gone")) || !(s_drained = PyUnicode_InternFromString("drained")) ||
        !(s_closed_name = PyUnicode_InternFromString("closed")) || !(s_exchange = PyUnicode_InternFromString("exchange")))
        return -1;
    if (PyType_Ready(&H2SessType) < 0) return -1;
    Py_INCREF(&H2SessType);
    if (PyModule_AddObject(m, "Http2Fast", (PyObject *)&H2SessType) < 0) return -1;
    nghttp2_info *info = nghttp2_version(0);
    return PyModule_AddStringConstant(m, "NGHTTP2_VERSION", info->version_str);
}
