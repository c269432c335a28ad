// The C glue between Swift and the system OpenSSL (3.0, Debian's libssl-dev).
//
// Swift imports OpenSSL's functions directly. What it cannot import are function-like macros and the
// SSL_OP_* / SSL_MODE_* constants built from casts, so each one used gets a static inline wrapper here.
// Nothing else belongs in this file, and every wrapper here is called.
#ifndef LENGTH_ECHO_COPENSSL_SHIM_H
#define LENGTH_ECHO_COPENSSL_SHIM_H

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static inline long shim_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long shim_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_max_proto_version(ctx, version);
}
static inline long shim_SSL_set_mode(SSL *ssl, long mode) { return SSL_set_mode(ssl, mode); }
static inline long shim_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
static inline long shim_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return SSL_CTX_set1_groups_list(ctx, list);
}
static inline long shim_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline long shim_BIO_get_mem_ptr(BIO *bio, BUF_MEM **out) { return BIO_get_mem_ptr(bio, out); }
static inline void shim_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void shim_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }

static inline uint64_t shim_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t shim_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t shim_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return SSL_OP_CIPHER_SERVER_PREFERENCE; }
static inline long shim_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline long shim_SSL_SESS_CACHE_SERVER(void) { return SSL_SESS_CACHE_SERVER; }

// An application-data index of our own, allocated once per process (index 0 may be another library's).
static inline int shim_SSL_get_ex_new_index(void) { return SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
static inline int shim_SSL_CTX_get_ex_new_index(void) { return SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

static inline unsigned long shim_XN_FLAG_ONELINE(void) { return XN_FLAG_ONELINE; }
static inline int shim_ERR_GET_LIB(unsigned long e) { return ERR_GET_LIB(e); }
static inline int shim_ERR_GET_REASON(unsigned long e) { return ERR_GET_REASON(e); }

#endif
