// The example policy, in C (clang for wasm32-wasi + `wit-bindgen c`).
// Identical in behaviour to the Rust, Python, JavaScript and WAT versions
// (see ../README.md):
//
// 1. deny a privileged container: CAP_SYS_ADMIN in any capability set;
// 2. deny an environment variable that looks like a secret: its name
//    contains SECRET, TOKEN or PASSWORD (any case), or its value starts with
//    AKIA, ghp_ or glpat-, or contains -----BEGIN;
// 3. deny an image outside the config's `allowed-registries` (comma
//    separated; unset or empty allows any);
// 4. otherwise mutate: drop CAP_NET_RAW, add annotation io.husk.policy=checked.
//
// Strings from the host are (ptr, len), not NUL-terminated. Everything
// returned must be malloc'ed: the generated post-return code frees it. Each
// call is a fresh instance, so nothing else needs freeing.

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef policy_string_t str_t;

static bool str_eq(const str_t *s, const char *lit) {
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

// Whether `hay` (len bytes) contains `needle`; case-insensitive if `fold`.
static bool contains(const uint8_t *hay, size_t len, const char *needle, bool fold) {
    size_t n = strlen(needle);
    for (size_t i = 0; n <= len && i <= len - n; i++) {
        size_t j = 0;
        while (j < n && (fold ? toupper(hay[i + j]) == needle[j] : hay[i + j] == (uint8_t)needle[j])) j++;
        if (j == n) return true;
    }
    return false;
}

static bool starts_with(const str_t *s, const char *prefix) {
    size_t n = strlen(prefix);
    return s->len >= n && memcmp(s->ptr, prefix, n) == 0;
}

static bool list_has(const policy_list_string_t *l, const char *lit) {
    for (size_t i = 0; i < l->len; i++)
        if (str_eq(&l->ptr[i], lit)) return true;
    return false;
}

// Deny with the concatenation of up to three (ptr, len) parts. No printf:
// stdio would pull WASI imports into the component, and this plugin needs none.
static void deny3(husk_plugin_types_verdict_t *ret, str_t a, str_t b, str_t c) {
    size_t n = a.len + b.len + c.len;
    uint8_t *buf = malloc(n ? n : 1);
    memcpy(buf, a.ptr, a.len);
    memcpy(buf + a.len, b.ptr, b.len);
    memcpy(buf + a.len + b.len, c.ptr, c.len);
    ret->tag = HUSK_PLUGIN_TYPES_VERDICT_DENY;
    ret->val.deny.ptr = buf;
    ret->val.deny.len = n;
}

static str_t lit(const char *s) {
    str_t r = {(uint8_t *)s, strlen(s)};
    return r;
}

static void deny(husk_plugin_types_verdict_t *ret, const char *msg) {
    deny3(ret, lit(msg), lit(""), lit(""));
}

// The registry of an image reference: its first component if that looks
// like a host (has a '.' or ':', or is 'localhost'), else docker.io.
static str_t registry(const str_t *ref) {
    const uint8_t *slash = memchr(ref->ptr, '/', ref->len);
    if (slash) {
        str_t first = {(uint8_t *)ref->ptr, (size_t)(slash - ref->ptr)};
        if (memchr(first.ptr, '.', first.len) || memchr(first.ptr, ':', first.len) ||
            str_eq(&first, "localhost"))
            return first;
    }
    str_t docker = {(uint8_t *)"docker.io", 9};
    return docker;
}

// Whether `reg` is one of the comma-separated entries of `list` (trimmed).
static bool allowed_in(const str_t *list, const str_t *reg) {
    size_t i = 0;
    while (i <= list->len) {
        size_t start = i;
        while (i < list->len && list->ptr[i] != ',') i++;
        size_t a = start, b = i;
        while (a < b && isspace(list->ptr[a])) a++;
        while (b > a && isspace(list->ptr[b - 1])) b--;
        if (b - a == reg->len && memcmp(list->ptr + a, reg->ptr, reg->len) == 0 && reg->len > 0)
            return true;
        i++;
    }
    return false;
}

static bool list_nonempty(const str_t *list) {
    for (size_t i = 0; i < list->len; i++)
        if (list->ptr[i] != ',' && !isspace(list->ptr[i])) return true;
    return false;
}

void exports_husk_plugin_policy_hooks_on_create(husk_plugin_types_container_view_t *c,
                                                husk_plugin_types_verdict_t *ret) {
    if (c->capabilities.is_some) {
        husk_plugin_types_capabilities_t *caps = &c->capabilities.val;
        policy_list_string_t *sets[] = {&caps->bounding, &caps->effective, &caps->permitted,
                                        &caps->inheritable, &caps->ambient};
        for (size_t i = 0; i < 5; i++) {
            if (list_has(sets[i], "CAP_SYS_ADMIN")) {
                deny(ret, "privileged container: CAP_SYS_ADMIN");
                return;
            }
        }
    }
    for (size_t i = 0; i < c->env.len; i++) {
        husk_plugin_types_env_var_t *e = &c->env.ptr[i];
        if (contains(e->name.ptr, e->name.len, "SECRET", true) ||
            contains(e->name.ptr, e->name.len, "TOKEN", true) ||
            contains(e->name.ptr, e->name.len, "PASSWORD", true) || starts_with(&e->value, "AKIA") ||
            starts_with(&e->value, "ghp_") || starts_with(&e->value, "glpat-") ||
            contains(e->value.ptr, e->value.len, "-----BEGIN", false)) {
            deny3(ret, lit("environment variable "), e->name, lit(" looks like a secret"));
            return;
        }
    }
    str_t key, allowed = {0};
    policy_string_set(&key, "allowed-registries");
    bool have = husk_plugin_config_get(&key, &allowed);
    if (have && list_nonempty(&allowed)) {
        str_t *ref = &c->image.reference;
        if (ref->len == 0) {
            deny3(ret, lit("image reference is unknown; allowed registries: "), allowed, lit(""));
            return;
        }
        str_t reg = registry(ref);
        if (!allowed_in(&allowed, &reg)) {
            // "image REF is not from an allowed registry (LIST)"
            str_t head = *ref;
            deny3(ret, lit("image "), head, lit(" is not from an allowed registry ("));
            str_t first = ret->val.deny;
            deny3(ret, first, allowed, lit(")"));
            free(first.ptr);
            return;
        }
    }
    husk_plugin_types_edit_t *edits = malloc(2 * sizeof *edits);
    edits[0].tag = HUSK_PLUGIN_TYPES_EDIT_DROP_CAPABILITY;
    policy_string_dup(&edits[0].val.drop_capability, "CAP_NET_RAW");
    edits[1].tag = HUSK_PLUGIN_TYPES_EDIT_ADD_ANNOTATION;
    policy_string_dup(&edits[1].val.add_annotation.key, "io.husk.policy");
    policy_string_dup(&edits[1].val.add_annotation.value, "checked");
    ret->tag = HUSK_PLUGIN_TYPES_VERDICT_MUTATE;
    ret->val.mutate.ptr = edits;
    ret->val.mutate.len = 2;
}
