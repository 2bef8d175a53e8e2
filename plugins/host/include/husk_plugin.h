/*
 * husk native plugin C ABI, version 1.
 *
 * For trusted operators who want no sandbox cost: a shared library loaded
 * into the shim with dlopen. It runs unsandboxed and uninterruptible (time
 * limits are only measured and logged), so only install code you trust as
 * much as the shim itself.
 *
 * Same hooks and meaning as the WIT package husk:plugin@0.1.0, with JSON in
 * and out (the host's serde form of the WIT types: snake_case fields,
 * variants as {"Name": value} or "Name"):
 *
 *   create: in  {"plugin": "...", "config": {"k": "v"}, "container": <container-view>}
 *           out "Allow" | {"Deny": "reason"} | {"Mutate": [<edit>, ...]}
 *           edits: {"SetEnv": {"name": "A", "value": "b"}}, {"DropCapability": "CAP_NET_RAW"},
 *                  {"AddMount": {"destination": "/x", "kind": "tmpfs", "source": "tmpfs", "options": []}},
 *                  {"SetReadonlyRootfs": true}, {"SetResource": {"Pids": 64}},
 *                  {"AddAnnotation": {"key": "k", "value": "v"}}
 *   start:  in  {"plugin": ..., "config": ..., "event": <start-event>}, out ignored
 *   exit:   in  {"plugin": ..., "config": ..., "event": <exit-event>},  out ignored
 */
#ifndef HUSK_PLUGIN_H
#define HUSK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define HUSK_PLUGIN_ABI_VERSION 1u

#define HUSK_HOOK_CREATE 1u
#define HUSK_HOOK_START 2u
#define HUSK_HOOK_EXIT 4u

/* Must return HUSK_PLUGIN_ABI_VERSION. */
uint32_t husk_plugin_abi_version(void);

/* The hooks the plugin implements: HUSK_HOOK_* or-ed together. */
uint32_t husk_plugin_hooks(void);

/*
 * Runs one hook. `input` is UTF-8 JSON of `input_len` bytes, valid only
 * during the call. The plugin stores in *out / *out_len a buffer it
 * allocated, which the host hands back to husk_plugin_free. Returns 0 on
 * success (*out holds the result JSON) or non-zero on failure (*out holds a
 * UTF-8 error message, or NULL). Must be thread-safe and must not unwind.
 */
int32_t husk_plugin_call(uint32_t hook, const uint8_t *input, size_t input_len,
                         uint8_t **out, size_t *out_len);

/* Frees a buffer returned through husk_plugin_call. */
void husk_plugin_free(uint8_t *ptr, size_t len);

#endif
