/* TLS types of the fast lane (tls.c): TlsContext, TlsConnection, set_ticket_keys, HAVE_TLS. */
#ifndef HOMEPLANE_TLS_H
#define HOMEPLANE_TLS_H
#include <Python.h>
int tls_add_to_module(PyObject *m);
#endif
