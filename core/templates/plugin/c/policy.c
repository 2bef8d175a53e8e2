// A husk policy plugin. husk calls
// exports_husk_plugin_policy_hooks_on_create before it creates each
// container; it answers allow, deny(reason) or mutate(edits). The types are
// generated from `wit/` (husk:plugin@0.1.0) into gen/policy.h by build.sh.
// See husk's docs/plugin-guide.md.
//
// Strings are (ptr, len), not NUL-terminated. Everything returned must come
// from malloc: the generated post-return code frees it. Each call runs in a
// fresh instance, so nothing else needs freeing, and globals do not survive
// between calls.

#include <stdlib.h>
#include <string.h>

#include "policy.h"

typedef policy_string_t str_t;

static bool str_eq(const str_t *a, const str_t *b) {
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

// A malloc'ed copy of the concatenation of a, b and c.
static str_t concat3(const char *a, const str_t *b, const char *c) {
    size_t na = strlen(a), nc = strlen(c);
    str_t r = {malloc(na + b->len + nc), na + b->len + nc};
    memcpy(r.ptr, a, na);
    memcpy(r.ptr + na, b->ptr, b->len);
    memcpy(r.ptr + na + b->len, c, nc);
    return r;
}

// A malloc'ed copy of len bytes at p.
static str_t copy(const uint8_t *p, size_t len) {
    str_t r = {malloc(len ? len : 1), len};
    memcpy(r.ptr, p, len);
    return r;
}

// The value of `key` in the plugin's config, if it is set.
static bool config_get(const char *key, str_t *value) {
    str_t k;
    policy_string_set(&k, key);
    return husk_plugin_config_get(&k, value);
}

void exports_husk_plugin_policy_hooks_on_create(husk_plugin_types_container_view_t *c,
                                                husk_plugin_types_verdict_t *ret) {
    str_t value;
    // Deny: with `deny-env = "NAME"` in the plugin's config, a container
    // that sets NAME is refused. Put your own checks here (capabilities,
    // mounts, image, user...: see husk_plugin_types_container_view_t).
    if (config_get("deny-env", &value)) {
        for (size_t i = 0; i < c->env.len; i++) {
            if (str_eq(&c->env.ptr[i].name, &value)) {
                ret->tag = HUSK_PLUGIN_TYPES_VERDICT_DENY;
                ret->val.deny = concat3("environment variable ", &value, " is not allowed");
                return;
            }
        }
    }
    // Mutate: with `add-annotation = "KEY=VALUE"`, the container gets that
    // annotation. Other edits: HUSK_PLUGIN_TYPES_EDIT_SET_ENV, _DROP_CAPABILITY,
    // _ADD_MOUNT, _SET_READONLY_ROOTFS, _SET_RESOURCE.
    if (config_get("add-annotation", &value)) {
        const uint8_t *eq = memchr(value.ptr, '=', value.len);
        size_t key_len = eq ? (size_t)(eq - value.ptr) : value.len;
        size_t rest = eq ? value.len - key_len - 1 : 0;
        husk_plugin_types_edit_t *edit = malloc(sizeof *edit);
        edit->tag = HUSK_PLUGIN_TYPES_EDIT_ADD_ANNOTATION;
        edit->val.add_annotation.key = copy(value.ptr, key_len);
        edit->val.add_annotation.value = copy(value.ptr + key_len + (eq ? 1 : 0), rest);
        ret->tag = HUSK_PLUGIN_TYPES_VERDICT_MUTATE;
        ret->val.mutate.ptr = edit;
        ret->val.mutate.len = 1;
        return;
    }
    ret->tag = HUSK_PLUGIN_TYPES_VERDICT_ALLOW;
}
