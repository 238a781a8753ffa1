/* Server-side TLS for the gateway's listeners, on OpenSSL through memory BIOs.
 *
 * Why C: asyncio's SSL transport (uvloop's included) drives Python's ssl.SSLObject, and on this
 * 2-core box that cost more CPU per HTTPS request than everything else the fast lane does. Here
 * OpenSSL does the record layer and handshake; this file only moves bytes between the socket's
 * transport and the application protocol. No TLS parsing is written here.
 *
 * TlsConnection plays two parts, like asyncio's SSL protocol: it is the protocol of the TCP
 * transport (ciphertext in and out) and the transport of the application protocol (plaintext:
 * Http1Fast, Http2Fast (http2.c) when ALPN chose h2, or Python's Http1Connection after a
 * hand-over). For the
 * application it quacks like asyncio's SSL transport, ``get_extra_info("ssl_object")`` included
 * (it is its own ssl object: ``selected_alpn_protocol()``, ``version()``, ``hp_sni``).
 *
 * TlsContext is one certificate with its listener's settings (TLS versions, ALPN). The port's
 * default context asks a Python selector for the context of the name a ClientHello carries
 * (gateway/tls.py chooses, the same choice as the pure-Python lane's SNI callback).
 *
 * Session resumption: tickets (TLS 1.2 and 1.3), encrypted with keys derived from one secret
 * and the time (an epoch of ``period`` seconds), so every worker process derives the same keys
 * with no coordination; a ticket made under one of the ``keep`` previous epochs is still
 * accepted and renewed. No server-side session cache: it could not be shared by the workers.
 */
#ifdef HP_HAVE_TLS
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "tls.h"

/* ---- session ticket keys ---------------------------------------------------------------- */

static unsigned char ticket_secret[32];
static int ticket_secret_set;
static long ticket_period = 3600;  /* seconds per key */
static int ticket_keep = 12;       /* earlier keys still accepted (and renewed) */
static long ticket_clock_offset;   /* tests move the clock */

typedef struct {
    long long epoch;
    unsigned char name[16], aes[32], mac[32];
} TicketKey;

#define KEY_CACHE 4
static TicketKey key_cache[KEY_CACHE];
static int key_cache_next;

static long long current_epoch(void) {
    return ((long long)time(NULL) + ticket_clock_offset) / ticket_period;
}

static int derive(const char *label, long long epoch, unsigned char *out, size_t want) {
    unsigned char msg[64], mac[EVP_MAX_MD_SIZE];
    size_t macl = 0;
    int n = snprintf((char *)msg, sizeof msg, "homeplane ticket %s %lld", label, epoch);
    if (!EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, ticket_secret, sizeof ticket_secret, msg, (size_t)n, mac, sizeof mac, &macl))
        return -1;
    memcpy(out, mac, want <= macl ? want : macl);
    return 0;
}

static const TicketKey *key_for_epoch(long long epoch) {
    for (int i = 0; i < KEY_CACHE; i++)
        if (key_cache[i].epoch == epoch && epoch != 0) return &key_cache[i];
    TicketKey *k = &key_cache[key_cache_next];
    key_cache_next = (key_cache_next + 1) % KEY_CACHE;
    if (derive("name", epoch, k->name, 16) < 0 || derive("aes", epoch, k->aes, 32) < 0 || derive("mac", epoch, k->mac, 32) < 0) {
        k->epoch = 0;
        return NULL;
    }
    k->epoch = epoch;
    return k;
}

static int init_mac(EVP_MAC_CTX *hctx, const TicketKey *k) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->mac, sizeof k->mac);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* OpenSSL's ticket callback: enc=1 makes a ticket under the current key; enc=0 finds the key a
 * ticket names (1: use it, 2: use it and issue a fresh ticket, 0: unknown, full handshake). */
static int ticket_cb(SSL *s, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc) {
    if (!ticket_secret_set) return 0;
    long long now = current_epoch();
    if (enc) {
        const TicketKey *k = key_for_epoch(now);
        if (!k || RAND_bytes(iv, 16) != 1) return -1;
        memcpy(key_name, k->name, 16);
        if (EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1 || !init_mac(hctx, k)) return -1;
        return 1;
    }
    for (int back = 0; back <= ticket_keep; back++) {
        const TicketKey *k = key_for_epoch(now - back);
        if (!k) return -1;
        if (memcmp(key_name, k->name, 16) != 0) continue;
        if (!init_mac(hctx, k) || EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1) return -1;
        return back == 0 ? 1 : 2;
    }
    return 0;
}

static PyObject *set_ticket_keys(PyObject *mod, PyObject *args) {
    Py_buffer secret;
    long period = 3600;
    int keep = 12;
    long offset = 0;
    if (!PyArg_ParseTuple(args, "y*|lil", &secret, &period, &keep, &offset)) return NULL;
    if (secret.len < 16 || period < 1 || keep < 0) {
        PyBuffer_Release(&secret);
        PyErr_SetString(PyExc_ValueError, "a secret of 16 bytes or more, period >= 1 s, keep >= 0");
        return NULL;
    }
    /* the secret may be longer than 32 bytes: fold it with SHA-256 */
    unsigned int outl = 0;
    EVP_Digest(secret.buf, (size_t)secret.len, ticket_secret, &outl, EVP_sha256(), NULL);
    PyBuffer_Release(&secret);
    ticket_secret_set = 1;
    ticket_period = period;
    ticket_keep = keep;
    ticket_clock_offset = offset;
    memset(key_cache, 0, sizeof key_cache);
    Py_RETURN_NONE;
}

/* ---- errors ------------------------------------------------------------------------------ */

/* OpenSSL's error queue as one line (and the queue emptied). */
static void ssl_error_text(char *out, size_t n, const char *fallback) {
    unsigned long e = ERR_get_error();
    if (e == 0) {
        snprintf(out, n, "%s", fallback);
        return;
    }
    const char *reason = ERR_reason_error_string(e);
    if (reason) snprintf(out, n, "%s", reason);
    else ERR_error_string_n(e, out, n);
    ERR_clear_error();
}

static PyObject *raise_ssl(const char *what) {
    char msg[256];
    ssl_error_text(msg, sizeof msg, "unknown error");
    PyErr_Format(PyExc_ValueError, "%s: %s", what, msg);
    return NULL;
}

/* ---- TlsContext ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
    unsigned char alpn[64];  /* server preference, wire format */
    unsigned int alpn_len;
    int min_version, max_version;
    PyObject *selector;      /* name (str) -> TlsContext | None; on the port's default context */
} TlsContext;

static PyTypeObject TlsContextType, TlsConnType;
typedef PyObject *TlsConnRef;  /* SSL app data: where the connection keeps its chosen context */

static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *arg) {
    TlsContext *tc = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    if (!tc || tc->alpn_len == 0) return SSL_TLSEXT_ERR_NOACK;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, tc->alpn, tc->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED) return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* The server name of a ClientHello (the extension's list holds one host_name entry). */
static int hello_server_name(SSL *s, char *out, size_t outn) {
    const unsigned char *p;
    size_t len;
    if (!SSL_client_hello_get0_ext(s, TLSEXT_TYPE_server_name, &p, &len) || len < 5) return 0;
    size_t list = ((size_t)p[0] << 8) | p[1];
    if (list + 2 != len || p[2] != TLSEXT_NAMETYPE_host_name) return 0;
    size_t n = ((size_t)p[3] << 8) | p[4];
    if (n + 5 > len || n == 0 || n >= outn) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[5 + i];
        out[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    out[n] = 0;
    return 1;
}

/* Choose the certificate (and the listener's TLS versions) before anything is negotiated. */
static int client_hello_cb(SSL *s, int *alert, void *arg) {
    TlsContext *dflt = SSL_CTX_get_app_data(SSL_get_SSL_CTX(s));
    if (!dflt || !dflt->selector) return SSL_CLIENT_HELLO_SUCCESS;
    char name[256];
    int has = hello_server_name(s, name, sizeof name);
    PyObject *arg_name = has ? PyUnicode_DecodeLatin1(name, (Py_ssize_t)strlen(name), NULL) : Py_NewRef(Py_None);
    PyObject *chosen = arg_name ? PyObject_CallOneArg(dflt->selector, arg_name) : NULL;
    Py_XDECREF(arg_name);
    if (!chosen) {
        PyErr_WriteUnraisable(dflt->selector);
        return SSL_CLIENT_HELLO_SUCCESS;
    }
    if (PyObject_TypeCheck(chosen, &TlsContextType) && chosen != (PyObject *)dflt) {
        TlsContext *tc = (TlsContext *)chosen;
        TlsConnRef *t = SSL_get_app_data(s);
        if (t) Py_XSETREF(*t, Py_NewRef(chosen));  /* its SSL_CTX's callbacks read it */
        SSL_set_SSL_CTX(s, tc->ctx);
        SSL_set_min_proto_version(s, tc->min_version);
        SSL_set_max_proto_version(s, tc->max_version);
    }
    Py_DECREF(chosen);
    return SSL_CLIENT_HELLO_SUCCESS;
}

static int load_chain(SSL_CTX *ctx, const char *pem, Py_ssize_t n) {
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    if (!bio) return -1;
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
    int ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    if (ok) {
        SSL_CTX_clear_chain_certs(ctx);
        X509 *ca;
        while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            if (!SSL_CTX_add0_chain_cert(ctx, ca)) { X509_free(ca); ok = 0; break; }
        }
        /* the end of the PEM data leaves a "no start line" error behind */
        unsigned long e = ERR_peek_last_error();
        if (ok && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ERR_clear_error();
    }
    BIO_free(bio);
    return ok ? 0 : -1;
}

static int load_key(SSL_CTX *ctx, const char *pem, Py_ssize_t n) {
    BIO *bio = BIO_new_mem_buf(pem, (int)n);
    if (!bio) return -1;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    int ok = key && SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

static const int VERSIONS[] = {0, TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};

static PyObject *TlsContext_new(PyTypeObject *t, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"cert_pem", "key_pem", "min_version", "max_version", "alpn", "selector", NULL};
    Py_buffer cert, key;
    int minv = 3, maxv = 0;
    PyObject *alpn = NULL, *selector = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*|iiOO", kwlist, &cert, &key, &minv, &maxv, &alpn, &selector)) return NULL;
    TlsContext *tc = NULL;
    if (minv < 1 || minv > 4 || maxv < 0 || maxv > 4) {
        PyErr_SetString(PyExc_ValueError, "TLS versions: 1 (1.0) .. 4 (1.3), max 0 for none");
        goto done;
    }
    tc = (TlsContext *)t->tp_alloc(t, 0);
    if (!tc) goto done;
    tc->ctx = SSL_CTX_new(TLS_server_method());
    if (!tc->ctx) { raise_ssl("SSL_CTX_new"); Py_CLEAR(tc); goto done; }
    tc->min_version = VERSIONS[minv];
    tc->max_version = VERSIONS[maxv];
    SSL_CTX_set_min_proto_version(tc->ctx, tc->min_version);
    SSL_CTX_set_max_proto_version(tc->ctx, tc->max_version);
    SSL_CTX_set_options(tc->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(tc->ctx, SSL_MODE_RELEASE_BUFFERS);  /* idle keep-alive connections hold no buffers */
    SSL_CTX_set_session_cache_mode(tc->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(tc->ctx, 1);
    {
        /* a session resumes only under the certificate it was made with: a ticket from one
         * listener presented with another's server name gets a full handshake (the client
         * then checks the certificate it is shown) */
        unsigned char sid[EVP_MAX_MD_SIZE];
        unsigned int sidl = 0;
        EVP_Digest(cert.buf, (size_t)cert.len, sid, &sidl, EVP_sha256(), NULL);
        SSL_CTX_set_session_id_context(tc->ctx, sid, sidl > SSL_MAX_SID_CTX_LENGTH ? SSL_MAX_SID_CTX_LENGTH : sidl);
    }
    SSL_CTX_set_timeout(tc->ctx, 12 * 3600);  /* ticket lifetime hint */
    SSL_CTX_set_tlsext_ticket_key_evp_cb(tc->ctx, ticket_cb);
    SSL_CTX_set_alpn_select_cb(tc->ctx, alpn_cb, NULL);
    SSL_CTX_set_app_data(tc->ctx, tc);
    if (load_chain(tc->ctx, cert.buf, cert.len) < 0) { raise_ssl("certificate"); Py_CLEAR(tc); goto done; }
    if (load_key(tc->ctx, key.buf, key.len) < 0) { raise_ssl("private key"); Py_CLEAR(tc); goto done; }
    if (alpn && alpn != Py_None) {
        PyObject *seq = PySequence_Fast(alpn, "alpn must be a sequence of bytes");
        if (!seq) { Py_CLEAR(tc); goto done; }
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
            PyObject *p = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyBytes_Check(p) || PyBytes_GET_SIZE(p) == 0 || PyBytes_GET_SIZE(p) > 255 ||
                (size_t)(tc->alpn_len + 1 + PyBytes_GET_SIZE(p)) > sizeof tc->alpn) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "alpn: protocol names as bytes, 64 bytes in all at most");
                Py_CLEAR(tc);
                goto done;
            }
            tc->alpn[tc->alpn_len++] = (unsigned char)PyBytes_GET_SIZE(p);
            memcpy(tc->alpn + tc->alpn_len, PyBytes_AS_STRING(p), PyBytes_GET_SIZE(p));
            tc->alpn_len += (unsigned int)PyBytes_GET_SIZE(p);
        }
        Py_DECREF(seq);
    }
    if (selector != Py_None) {
        tc->selector = Py_NewRef(selector);
        SSL_CTX_set_client_hello_cb(tc->ctx, client_hello_cb, NULL);
    }
done:
    PyBuffer_Release(&cert);
    PyBuffer_Release(&key);
    return (PyObject *)tc;
}

static int TlsContext_traverse(TlsContext *tc, visitproc visit, void *arg) {
    Py_VISIT(tc->selector);
    return 0;
}

static int TlsContext_clear(TlsContext *tc) {
    Py_CLEAR(tc->selector);
    return 0;
}

static void TlsContext_dealloc(TlsContext *tc) {
    PyObject_GC_UnTrack(tc);
    TlsContext_clear(tc);
    if (tc->ctx) {
        SSL_CTX_set_app_data(tc->ctx, NULL);  /* connections still using it must not see a freed object */
        SSL_CTX_free(tc->ctx);
    }
    Py_TYPE(tc)->tp_free((PyObject *)tc);
}

static PyTypeObject TlsContextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "homeplane.gateway.frontends._fastlane.TlsContext",
    .tp_doc = "TlsContext(cert_pem, key_pem, min_version=3, max_version=0, alpn=(), selector=None): one certificate and its listener's TLS settings.",
    .tp_basicsize = sizeof(TlsContext),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = TlsContext_new,
    .tp_dealloc = (destructor)TlsContext_dealloc,
    .tp_traverse = (traverseproc)TlsContext_traverse,
    .tp_clear = (inquiry)TlsContext_clear,
};

/* ---- TlsConnection ---------------------------------------------------------------------- */

enum { TS_NEW, TS_HANDSHAKE, TS_OPEN, TS_CLOSING, TS_CLOSED };

typedef struct {
    PyObject_HEAD
    SSL *ssl;
    BIO *rbio, *wbio;
    PyObject *ctx;           /* the port's default TlsContext (keeps the SSL_CTX alive) */
    PyObject *factory;       /* () -> the application protocol, called when the handshake is done */
    PyObject *loop;
    double handshake_timeout;
    PyObject *timer;         /* the handshake's deadline (a TimerHandle) */
    PyObject *raw;           /* the TCP transport */
    PyObject *raw_write;
    PyObject *app;           /* the application protocol */
    PyObject *app_data_received;
    PyObject *preread;       /* bytes read from the socket before TLS started (PROXY header case) */
    PyObject *chosen;        /* the TlsContext the ClientHello's name chose (kept while in use) */
    int state, eof_delivered;
    PyObject *weakreflist;
} TlsConn;

static PyObject *s_write_name, *s_close_name, *s_abort_name, *s_connection_made, *s_connection_lost, *s_data_received,
    *s_eof_received, *s_pause_writing, *s_resume_writing, *s_pause_reading, *s_resume_reading, *s_get_extra_info,
    *s_call_later, *s_cancel, *s_is_closing, *s_get_write_buffer_size, *s_set_write_buffer_limits, *s_is_reading,
    *s_get_write_buffer_limits;

static void call_noargs(PyObject *obj, PyObject *name) {
    if (!obj || obj == Py_None) return;
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    if (!r) PyErr_WriteUnraisable(obj);
    Py_XDECREF(r);
}

/* Whatever OpenSSL wrote (records, alerts, tickets) goes to the socket. */
static void flush_wbio(TlsConn *t) {
    size_t n = BIO_ctrl_pending(t->wbio);
    if (n == 0 || !t->raw_write) {
        if (n) BIO_reset(t->wbio);
        return;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!b) { PyErr_WriteUnraisable((PyObject *)t); return; }
    int got = BIO_read(t->wbio, PyBytes_AS_STRING(b), (int)n);
    if (got != (int)n) { Py_DECREF(b); BIO_reset(t->wbio); return; }
    PyObject *r = PyObject_CallOneArg(t->raw_write, b);
    Py_DECREF(b);
    if (!r) PyErr_WriteUnraisable((PyObject *)t);
    Py_XDECREF(r);
}

static void tls_abort(TlsConn *t, const char *why) {
    if (t->state >= TS_CLOSING) return;
    t->state = TS_CLOSING;
    if (why) {
        PyObject *log = PyImport_ImportModule("logging");
        PyObject *logger = log ? PyObject_CallMethod(log, "getLogger", "s", "homeplane.gateway") : NULL;
        PyObject *r = logger ? PyObject_CallMethod(logger, "debug", "ss", "TLS connection closed: %s", why) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(logger);
        Py_XDECREF(log);
        PyErr_Clear();
    }
    flush_wbio(t);  /* the alert, when OpenSSL made one */
    call_noargs(t->raw, s_close_name);
}

static PyObject *TlsConn_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"context", "factory", "loop", "handshake_timeout", "preread", NULL};
    PyObject *ctx, *factory, *loop = Py_None, *preread = NULL;
    double timeout = 10.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|OdS", kwlist, &TlsContextType, &ctx, &factory, &loop, &timeout, &preread)) return NULL;
    TlsConn *t = (TlsConn *)type->tp_alloc(type, 0);
    if (!t) return NULL;
    t->ssl = SSL_new(((TlsContext *)ctx)->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        t->rbio = t->wbio = NULL;
        Py_DECREF(t);
        return raise_ssl("SSL_new");
    }
    BIO_set_mem_eof_return(t->rbio, -1);  /* no bytes yet is "want read", not the end */
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);  /* owned by the SSL from here on */
    SSL_set_accept_state(t->ssl);
    SSL_set_app_data(t->ssl, &t->chosen);
    t->ctx = Py_NewRef(ctx);
    t->factory = Py_NewRef(factory);
    t->loop = Py_NewRef(loop);
    t->handshake_timeout = timeout;
    t->preread = preread && PyBytes_GET_SIZE(preread) ? Py_NewRef(preread) : NULL;
    return (PyObject *)t;
}

static int TlsConn_traverse(TlsConn *t, visitproc visit, void *arg) {
    Py_VISIT(t->ctx);
    Py_VISIT(t->factory);
    Py_VISIT(t->loop);
    Py_VISIT(t->timer);
    Py_VISIT(t->raw);
    Py_VISIT(t->raw_write);
    Py_VISIT(t->app);
    Py_VISIT(t->app_data_received);
    Py_VISIT(t->preread);
    Py_VISIT(t->chosen);
    return 0;
}

static int TlsConn_clear(TlsConn *t) {
    Py_CLEAR(t->ctx);
    Py_CLEAR(t->factory);
    Py_CLEAR(t->loop);
    Py_CLEAR(t->timer);
    Py_CLEAR(t->raw);
    Py_CLEAR(t->raw_write);
    Py_CLEAR(t->app);
    Py_CLEAR(t->app_data_received);
    Py_CLEAR(t->preread);
    Py_CLEAR(t->chosen);
    return 0;
}

static void TlsConn_dealloc(TlsConn *t) {
    PyObject_GC_UnTrack(t);
    if (t->weakreflist) PyObject_ClearWeakRefs((PyObject *)t);
    if (t->ssl) SSL_free(t->ssl);  /* frees both BIOs; before the contexts it may point to */
    t->ssl = NULL;
    TlsConn_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static void feed(TlsConn *t, const char *p, Py_ssize_t n);

/* -- the TCP transport's protocol -- */

/* No Nagle: the session ticket is a small write of its own, and the response after it would
 * wait for the client's delayed ACK (40 ms) behind it. */
static PyObject *TlsConn_connection_made(TlsConn *t, PyObject *raw) {
    Py_XSETREF(t->raw, Py_NewRef(raw));
    Py_XSETREF(t->raw_write, PyObject_GetAttr(raw, s_write_name));
    if (!t->raw_write) return NULL;
    t->state = TS_HANDSHAKE;
    if (t->loop != Py_None && t->handshake_timeout > 0) {
        PyObject *expire = PyObject_GetAttrString((PyObject *)t, "_handshake_expired");
        PyObject *delay = PyFloat_FromDouble(t->handshake_timeout);
        PyObject *timer = expire && delay ? PyObject_CallMethodObjArgs(t->loop, s_call_later, delay, expire, NULL) : NULL;
        Py_XDECREF(expire);
        Py_XDECREF(delay);
        if (!timer) return NULL;
        Py_XSETREF(t->timer, timer);
    }
    if (t->preread) {
        PyObject *pre = t->preread;
        t->preread = NULL;
        Py_INCREF(t);
        feed(t, PyBytes_AS_STRING(pre), PyBytes_GET_SIZE(pre));
        Py_DECREF(pre);
        Py_DECREF(t);
    }
    Py_RETURN_NONE;
}

static PyObject *TlsConn_handshake_expired(TlsConn *t, PyObject *unused) {
    Py_CLEAR(t->timer);
    if (t->state == TS_HANDSHAKE) tls_abort(t, "handshake timed out");
    Py_RETURN_NONE;
}

/* Decrypt what is there and hand it to the application in one piece. */
static void deliver(TlsConn *t) {
    char stack[16384];
    char *acc = NULL;
    Py_ssize_t acc_len = 0, acc_cap = 0;
    int eof = 0, failed = 0;
    for (;;) {
        int r = SSL_read(t->ssl, stack, sizeof stack);
        if (r > 0) {
            if (acc_len + r > acc_cap) {
                Py_ssize_t cap = acc_cap ? acc_cap * 2 : 32768;
                while (cap < acc_len + r) cap *= 2;
                char *d = PyMem_Realloc(acc, cap);
                if (!d) { failed = 1; break; }
                acc = d;
                acc_cap = cap;
            }
            memcpy(acc + acc_len, stack, r);
            acc_len += r;
            continue;
        }
        int err = SSL_get_error(t->ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
        if (err == SSL_ERROR_ZERO_RETURN) { eof = 1; break; }
        failed = 1;
        break;
    }
    flush_wbio(t);  /* key updates, alerts */
    if (acc_len && t->app_data_received && t->state == TS_OPEN) {
        PyObject *b = PyBytes_FromStringAndSize(acc, acc_len);
        PyObject *r = b ? PyObject_CallOneArg(t->app_data_received, b) : NULL;
        Py_XDECREF(b);
        if (!r) PyErr_WriteUnraisable(t->app);
        Py_XDECREF(r);
    }
    PyMem_Free(acc);
    if (failed) {
        char msg[256];
        ssl_error_text(msg, sizeof msg, "TLS error");
        tls_abort(t, msg);
        return;
    }
    if (eof && !t->eof_delivered && t->state == TS_OPEN) {
        /* close_notify: the client is done; answer it and close (as asyncio's SSL transport) */
        t->eof_delivered = 1;
        if (t->app) {
            PyObject *r = PyObject_CallMethodNoArgs(t->app, s_eof_received);
            if (!r) PyErr_WriteUnraisable(t->app);
            Py_XDECREF(r);
        }
        if (t->state == TS_OPEN) {
            t->state = TS_CLOSING;
            SSL_shutdown(t->ssl);
            flush_wbio(t);
            call_noargs(t->raw, s_close_name);
        }
    }
}

static void handshake(TlsConn *t) {
    int r = SSL_do_handshake(t->ssl);
    if (r != 1) {
        int err = SSL_get_error(t->ssl, r);
        flush_wbio(t);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
        char msg[256];
        ssl_error_text(msg, sizeof msg, "handshake failed");
        tls_abort(t, msg);
        return;
    }
    flush_wbio(t);  /* the server's last flight and the session ticket */
    t->state = TS_OPEN;
    if (t->timer) {
        call_noargs(t->timer, s_cancel);
        Py_CLEAR(t->timer);
    }
    PyObject *app = PyObject_CallNoArgs(t->factory);
    if (!app) {
        PyErr_WriteUnraisable(t->factory);
        tls_abort(t, NULL);
        return;
    }
    Py_XSETREF(t->app, app);
    Py_XSETREF(t->app_data_received, PyObject_GetAttr(app, s_data_received));
    PyObject *res = PyObject_CallMethodOneArg(app, s_connection_made, (PyObject *)t);
    if (!res) {
        PyErr_WriteUnraisable(app);
        tls_abort(t, NULL);
        return;
    }
    Py_DECREF(res);
}

static void feed(TlsConn *t, const char *p, Py_ssize_t n) {
    if (t->state >= TS_CLOSING) return;
    if (n > 0 && BIO_write(t->rbio, p, (int)n) != (int)n) {
        tls_abort(t, "out of memory");
        return;
    }
    if (t->state == TS_HANDSHAKE) {
        handshake(t);
        if (t->state != TS_OPEN) return;
    }
    deliver(t);
}

static PyObject *TlsConn_data_received(TlsConn *t, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_INCREF(t);
    feed(t, view.buf, view.len);
    Py_DECREF(t);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_eof_received(TlsConn *t, PyObject *unused) {
    /* the TCP stream ended (with or without close_notify): the connection is over */
    if (t->state == TS_OPEN && t->app && !t->eof_delivered) {
        t->eof_delivered = 1;
        PyObject *r = PyObject_CallMethodNoArgs(t->app, s_eof_received);
        if (!r) PyErr_WriteUnraisable(t->app);
        Py_XDECREF(r);
    }
    Py_RETURN_NONE;  /* None: the transport closes itself */
}

static PyObject *TlsConn_connection_lost(TlsConn *t, PyObject *exc) {
    int was_open = t->app != NULL;
    t->state = TS_CLOSED;
    if (t->timer) {
        call_noargs(t->timer, s_cancel);
        Py_CLEAR(t->timer);
    }
    if (was_open) {
        PyObject *app = Py_NewRef(t->app);
        PyObject *r = PyObject_CallMethodOneArg(app, s_connection_lost, exc);
        if (!r) PyErr_WriteUnraisable(app);
        Py_XDECREF(r);
        Py_DECREF(app);
    }
    Py_CLEAR(t->app_data_received);
    Py_CLEAR(t->app);
    Py_CLEAR(t->raw_write);
    Py_CLEAR(t->factory);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_pause_writing(TlsConn *t, PyObject *unused) {
    if (t->app) call_noargs(t->app, s_pause_writing);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_resume_writing(TlsConn *t, PyObject *unused) {
    if (t->app) call_noargs(t->app, s_resume_writing);
    Py_RETURN_NONE;
}

/* -- the application's transport -- */

static int encrypt(TlsConn *t, const char *p, Py_ssize_t n) {
    while (n > 0) {
        int chunk = n > (1 << 30) ? (1 << 30) : (int)n;
        int r = SSL_write(t->ssl, p, chunk);
        if (r <= 0) {
            char msg[256];
            ssl_error_text(msg, sizeof msg, "write failed");
            tls_abort(t, msg);
            return -1;
        }
        p += r;
        n -= r;
    }
    return 0;
}

static PyObject *TlsConn_write(TlsConn *t, PyObject *data) {
    if (t->state != TS_OPEN) Py_RETURN_NONE;  /* closing: as asyncio, writes after close are dropped */
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    int r = encrypt(t, view.buf, view.len);
    PyBuffer_Release(&view);
    if (r == 0) flush_wbio(t);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_writelines(TlsConn *t, PyObject *lines) {
    if (t->state != TS_OPEN) Py_RETURN_NONE;
    PyObject *it = PyObject_GetIter(lines);
    if (!it) return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        Py_buffer view;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) { Py_DECREF(item); Py_DECREF(it); return NULL; }
        int r = encrypt(t, view.buf, view.len);
        PyBuffer_Release(&view);
        Py_DECREF(item);
        if (r < 0) break;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    flush_wbio(t);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_close(TlsConn *t, PyObject *unused) {
    if (t->state >= TS_CLOSING) Py_RETURN_NONE;
    int was_open = t->state == TS_OPEN;
    t->state = TS_CLOSING;
    if (was_open) {
        SSL_shutdown(t->ssl);  /* close_notify */
        flush_wbio(t);
    }
    call_noargs(t->raw, s_close_name);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_abort(TlsConn *t, PyObject *unused) {
    t->state = t->state < TS_CLOSING ? TS_CLOSING : t->state;
    call_noargs(t->raw, s_abort_name);
    Py_RETURN_NONE;
}

static PyObject *TlsConn_is_closing(TlsConn *t, PyObject *unused) {
    if (t->state >= TS_CLOSING || !t->raw) Py_RETURN_TRUE;
    return PyObject_CallMethodNoArgs(t->raw, s_is_closing);
}

static PyObject *raw_call(TlsConn *t, PyObject *name) {
    if (!t->raw) Py_RETURN_NONE;
    return PyObject_CallMethodNoArgs(t->raw, name);
}

static PyObject *TlsConn_pause_reading(TlsConn *t, PyObject *unused) { return raw_call(t, s_pause_reading); }
static PyObject *TlsConn_resume_reading(TlsConn *t, PyObject *unused) { return raw_call(t, s_resume_reading); }
static PyObject *TlsConn_is_reading(TlsConn *t, PyObject *unused) {
    if (!t->raw) Py_RETURN_FALSE;
    return PyObject_CallMethodNoArgs(t->raw, s_is_reading);
}
static PyObject *TlsConn_get_write_buffer_size(TlsConn *t, PyObject *unused) {
    if (!t->raw) return PyLong_FromLong(0);
    return PyObject_CallMethodNoArgs(t->raw, s_get_write_buffer_size);
}
static PyObject *TlsConn_get_write_buffer_limits(TlsConn *t, PyObject *unused) {
    if (!t->raw) return Py_BuildValue("(ii)", 0, 0);
    return PyObject_CallMethodNoArgs(t->raw, s_get_write_buffer_limits);
}

static PyObject *TlsConn_set_write_buffer_limits(TlsConn *t, PyObject *args, PyObject *kw) {
    if (!t->raw) Py_RETURN_NONE;
    PyObject *m = PyObject_GetAttr(t->raw, s_set_write_buffer_limits);
    if (!m) return NULL;
    PyObject *r = PyObject_Call(m, args, kw);
    Py_DECREF(m);
    return r;
}

static PyObject *TlsConn_set_protocol(TlsConn *t, PyObject *proto) {
    Py_XSETREF(t->app, Py_NewRef(proto));
    Py_XSETREF(t->app_data_received, PyObject_GetAttr(proto, s_data_received));
    if (!t->app_data_received) return NULL;
    Py_RETURN_NONE;
}

static PyObject *TlsConn_get_protocol(TlsConn *t, PyObject *unused) {
    return Py_NewRef(t->app ? t->app : Py_None);
}

static PyObject *TlsConn_can_write_eof(TlsConn *t, PyObject *unused) { Py_RETURN_FALSE; }

static PyObject *TlsConn_write_eof(TlsConn *t, PyObject *unused) {
    PyErr_SetString(PyExc_NotImplementedError, "TLS transports cannot half-close");
    return NULL;
}

static PyObject *TlsConn_get_extra_info(TlsConn *t, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"name", "default", NULL};
    PyObject *name, *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|O", kwlist, &name, &dflt)) return NULL;
    if (PyUnicode_CompareWithASCIIString(name, "ssl_object") == 0) return Py_NewRef((PyObject *)t);
    if (PyUnicode_CompareWithASCIIString(name, "sslcontext") == 0 || PyUnicode_CompareWithASCIIString(name, "peercert") == 0)
        return Py_NewRef(dflt);
    if (PyUnicode_CompareWithASCIIString(name, "cipher") == 0) {
        const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
        if (!c) return Py_NewRef(dflt);
        return Py_BuildValue("(ssi)", SSL_CIPHER_get_name(c), SSL_get_version(t->ssl), SSL_CIPHER_get_bits(c, NULL));
    }
    if (!t->raw) return Py_NewRef(dflt);
    return PyObject_CallMethodObjArgs(t->raw, s_get_extra_info, name, dflt, NULL);
}

/* -- the ssl object's questions (ssl.SSLObject's names) -- */

static PyObject *TlsConn_selected_alpn_protocol(TlsConn *t, PyObject *unused) {
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (!p || !n) Py_RETURN_NONE;
    return PyUnicode_DecodeLatin1((const char *)p, n, NULL);
}

static PyObject *TlsConn_version(TlsConn *t, PyObject *unused) {
    if (t->state < TS_OPEN) Py_RETURN_NONE;
    return PyUnicode_FromString(SSL_get_version(t->ssl));
}

static PyObject *TlsConn_session_reused(TlsConn *t, void *unused) { return PyBool_FromLong(SSL_session_reused(t->ssl)); }

static PyObject *TlsConn_getpeercert(TlsConn *t, PyObject *args) { Py_RETURN_NONE; }

static PyObject *TlsConn_get_sni(TlsConn *t, void *unused) {
    const char *name = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || !*name) Py_RETURN_NONE;
    PyObject *s = PyUnicode_DecodeLatin1(name, (Py_ssize_t)strlen(name), NULL);
    if (!s) return NULL;
    PyObject *low = PyObject_CallMethod(s, "lower", NULL);
    Py_DECREF(s);
    return low;
}

static PyMethodDef TlsConn_methods[] = {
    {"connection_made", (PyCFunction)TlsConn_connection_made, METH_O, NULL},
    {"data_received", (PyCFunction)TlsConn_data_received, METH_O, NULL},
    {"eof_received", (PyCFunction)TlsConn_eof_received, METH_NOARGS, NULL},
    {"connection_lost", (PyCFunction)TlsConn_connection_lost, METH_O, NULL},
    {"pause_writing", (PyCFunction)TlsConn_pause_writing, METH_NOARGS, NULL},
    {"resume_writing", (PyCFunction)TlsConn_resume_writing, METH_NOARGS, NULL},
    {"_handshake_expired", (PyCFunction)TlsConn_handshake_expired, METH_NOARGS, NULL},
    {"write", (PyCFunction)TlsConn_write, METH_O, NULL},
    {"writelines", (PyCFunction)TlsConn_writelines, METH_O, NULL},
    {"close", (PyCFunction)TlsConn_close, METH_NOARGS, "close_notify, then close the TCP connection."},
    {"abort", (PyCFunction)TlsConn_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)TlsConn_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)TlsConn_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)TlsConn_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)TlsConn_is_reading, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)TlsConn_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)TlsConn_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))TlsConn_set_write_buffer_limits, METH_VARARGS | METH_KEYWORDS, NULL},
    {"set_protocol", (PyCFunction)TlsConn_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)TlsConn_get_protocol, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)TlsConn_can_write_eof, METH_NOARGS, NULL},
    {"write_eof", (PyCFunction)TlsConn_write_eof, METH_NOARGS, NULL},
    {"get_extra_info", (PyCFunction)(void (*)(void))TlsConn_get_extra_info, METH_VARARGS | METH_KEYWORDS, NULL},
    {"selected_alpn_protocol", (PyCFunction)TlsConn_selected_alpn_protocol, METH_NOARGS, NULL},
    {"version", (PyCFunction)TlsConn_version, METH_NOARGS, NULL},
    {"getpeercert", (PyCFunction)TlsConn_getpeercert, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef TlsConn_getset[] = {
    {"hp_sni", (getter)TlsConn_get_sni, NULL, "The server name the client asked for (lower case), or None.", NULL},
    {"session_reused", (getter)TlsConn_session_reused, NULL, "The handshake resumed a session (a ticket).", NULL},
    {NULL},
};

static PyTypeObject TlsConnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "homeplane.gateway.frontends._fastlane.TlsConnection",
    .tp_doc = "TlsConnection(context, factory, loop=None, handshake_timeout=10.0, preread=b''): TLS between a TCP transport and an application protocol.",
    .tp_basicsize = sizeof(TlsConn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = TlsConn_new,
    .tp_dealloc = (destructor)TlsConn_dealloc,
    .tp_traverse = (traverseproc)TlsConn_traverse,
    .tp_clear = (inquiry)TlsConn_clear,
    .tp_methods = TlsConn_methods,
    .tp_getset = TlsConn_getset,
    .tp_weaklistoffset = offsetof(TlsConn, weakreflist),
};

static PyMethodDef tls_functions[] = {
    {"set_ticket_keys", set_ticket_keys, METH_VARARGS,
     "set_ticket_keys(secret, period=3600, keep=12, clock_offset=0): session ticket keys from a shared secret."},
    {NULL},
};

#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return -1

int tls_add_to_module(PyObject *m) {
    INTERN(s_write_name, "write"); INTERN(s_close_name, "close"); INTERN(s_abort_name, "abort");
    INTERN(s_connection_made, "connection_made"); INTERN(s_connection_lost, "connection_lost");
    INTERN(s_data_received, "data_received"); INTERN(s_eof_received, "eof_received");
    INTERN(s_pause_writing, "pause_writing"); INTERN(s_resume_writing, "resume_writing");
    INTERN(s_pause_reading, "pause_reading"); INTERN(s_resume_reading, "resume_reading");
    INTERN(s_get_extra_info, "get_extra_info"); INTERN(s_call_later, "call_later"); INTERN(s_cancel, "cancel");
    INTERN(s_is_closing, "is_closing"); INTERN(s_get_write_buffer_size, "get_write_buffer_size");
    INTERN(s_set_write_buffer_limits, "set_write_buffer_limits"); INTERN(s_is_reading, "is_reading");
    INTERN(s_get_write_buffer_limits, "get_write_buffer_limits");
    if (PyType_Ready(&TlsContextType) < 0 || PyType_Ready(&TlsConnType) < 0) return -1;
    if (PyModule_AddObjectRef(m, "TlsContext", (PyObject *)&TlsContextType) < 0) return -1;
    if (PyModule_AddObjectRef(m, "TlsConnection", (PyObject *)&TlsConnType) < 0) return -1;
    for (PyMethodDef *d = tls_functions; d->ml_name; d++) {
        PyObject *f = PyCFunction_New(d, NULL);
        if (!f || PyModule_AddObject(m, d->ml_name, f) < 0) { Py_XDECREF(f); return -1; }
    }
    PyObject *ver = PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
    if (!ver || PyModule_AddObject(m, "OPENSSL_VERSION", ver) < 0) { Py_XDECREF(ver); return -1; }
    return PyModule_AddIntConstant(m, "HAVE_TLS", 1);
}

#else /* built without OpenSSL's headers: the TLS of the pure-Python lane serves */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "tls.h"
int tls_add_to_module(PyObject *m) { return PyModule_AddIntConstant(m, "HAVE_TLS", 0); }
#endif
