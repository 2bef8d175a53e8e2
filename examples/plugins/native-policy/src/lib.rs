//! The example policy as a native plugin (trusted, unsandboxed), through the
//! C ABI of plugins/host/include/husk_plugin.h: JSON in, JSON out. Same
//! behaviour as the wasm versions (see ../README.md).

use serde_json::{json, Value};

const HOOK_CREATE: u32 = 1;
const SECRET_NAMES: [&str; 3] = ["SECRET", "TOKEN", "PASSWORD"];
const SECRET_PREFIXES: [&str; 3] = ["AKIA", "ghp_", "glpat-"];

fn registry(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn decide(input: &Value) -> Value {
    let c = &input["container"];
    if let Some(caps) = c["capabilities"].as_object() {
        if caps
            .values()
            .any(|set| strs(set).any(|cap| cap == "CAP_SYS_ADMIN"))
        {
            return json!({"Deny": "privileged container: CAP_SYS_ADMIN"});
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default();
        let value = e["value"].as_str().unwrap_or_default();
        let upper = name.to_ascii_uppercase();
        if SECRET_NAMES.iter().any(|s| upper.contains(s))
            || SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
            || value.contains("-----BEGIN")
        {
            return json!({"Deny": format!("environment variable {name} looks like a secret")});
        }
    }
    let allowed = input["config"]["allowed-registries"]
        .as_str()
        .unwrap_or_default();
    let list: Vec<&str> = allowed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !list.is_empty() {
        let reference = c["image"]["reference"].as_str().unwrap_or_default();
        if reference.is_empty() {
            return json!({"Deny": format!("image reference is unknown; allowed registries: {allowed}")});
        }
        if !list.contains(&registry(reference)) {
            return json!({"Deny": format!("image {reference} is not from an allowed registry ({allowed})")});
        }
    }
    json!({"Mutate": [
        {"DropCapability": "CAP_NET_RAW"},
        {"AddAnnotation": {"key": "io.husk.policy", "value": "checked"}},
    ]})
}

#[no_mangle]
pub extern "C" fn husk_plugin_abi_version() -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn husk_plugin_hooks() -> u32 {
    HOOK_CREATE
}

fn give(bytes: Vec<u8>, out: *mut *mut u8, out_len: *mut usize) {
    let mut b = bytes.into_boxed_slice();
    // SAFETY: the host passes valid pointers to its locals (husk_plugin.h).
    unsafe {
        *out_len = b.len();
        *out = b.as_mut_ptr();
    }
    std::mem::forget(b);
}

/// # Safety
/// `input` must point to `input_len` readable bytes; `out` and `out_len`
/// must be valid for writes (the host guarantees both).
#[no_mangle]
pub unsafe extern "C" fn husk_plugin_call(
    hook: u32,
    input: *const u8,
    input_len: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> i32 {
    // Never unwind into the host.
    let result = std::panic::catch_unwind(|| {
        // SAFETY: see the function's contract.
        let bytes = unsafe { std::slice::from_raw_parts(input, input_len) };
        let input: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match hook {
            HOOK_CREATE => Ok::<Value, String>(decide(&input)),
            _ => Ok(Value::Null),
        }
    });
    match result {
        Ok(Ok(v)) => {
            give(serde_json::to_vec(&v).unwrap_or_default(), out, out_len);
            0
        }
        Ok(Err(e)) => {
            give(e.into_bytes(), out, out_len);
            1
        }
        Err(_) => {
            give(b"panicked".to_vec(), out, out_len);
            2
        }
    }
}

/// # Safety
/// `ptr`/`len` must be a buffer returned by `husk_plugin_call`.
#[no_mangle]
pub unsafe extern "C" fn husk_plugin_free(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        // SAFETY: it was a Box<[u8]> of exactly `len` bytes, leaked in `give`.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
    }
}
