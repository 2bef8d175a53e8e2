// The example policy, in JavaScript (componentize-qjs: QuickJS compiled into
// the component). Identical in behaviour to the Rust, Python, C and WAT
// versions (see ../README.md):
//
// 1. deny a privileged container: CAP_SYS_ADMIN in any capability set;
// 2. deny an environment variable that looks like a secret: its name
//    contains SECRET, TOKEN or PASSWORD (any case), or its value starts with
//    AKIA, ghp_ or glpat-, or contains -----BEGIN;
// 3. deny an image outside the config's `allowed-registries` (comma
//    separated; unset or empty allows any);
// 4. otherwise mutate: drop CAP_NET_RAW, add annotation io.husk.policy=checked.

import config from "husk:plugin/config@0.1.0";

const SECRET_NAMES = ["SECRET", "TOKEN", "PASSWORD"];
const SECRET_PREFIXES = ["AKIA", "ghp_", "glpat-"];

// The registry of an image reference: its first component if that looks
// like a host (has a '.' or ':', or is 'localhost'), else docker.io.
function registry(reference) {
  const slash = reference.indexOf("/");
  if (slash >= 0) {
    const first = reference.slice(0, slash);
    if (first.includes(".") || first.includes(":") || first === "localhost") return first;
  }
  return "docker.io";
}

function decide(c) {
  const caps = c.capabilities;
  if (caps) {
    for (const set of [caps.bounding, caps.effective, caps.permitted, caps.inheritable, caps.ambient]) {
      if (set.includes("CAP_SYS_ADMIN")) {
        return { tag: "deny", val: "privileged container: CAP_SYS_ADMIN" };
      }
    }
  }
  for (const e of c.env) {
    const upper = e.name.toUpperCase();
    if (
      SECRET_NAMES.some((s) => upper.includes(s)) ||
      SECRET_PREFIXES.some((p) => e.value.startsWith(p)) ||
      e.value.includes("-----BEGIN")
    ) {
      return { tag: "deny", val: `environment variable ${e.name} looks like a secret` };
    }
  }
  const allowed = config.get("allowed-registries") ?? "";
  const wanted = allowed.split(",").map((r) => r.trim()).filter((r) => r.length > 0);
  if (wanted.length > 0) {
    if (c.image.reference === "") {
      return { tag: "deny", val: `image reference is unknown; allowed registries: ${allowed}` };
    }
    if (!wanted.includes(registry(c.image.reference))) {
      return {
        tag: "deny",
        val: `image ${c.image.reference} is not from an allowed registry (${allowed})`,
      };
    }
  }
  return {
    tag: "mutate",
    val: [
      { tag: "drop-capability", val: "CAP_NET_RAW" },
      { tag: "add-annotation", val: { key: "io.husk.policy", value: "checked" } },
    ],
  };
}

export const policyHooks = {
  onCreate(container) {
    return decide(container);
  },
};
