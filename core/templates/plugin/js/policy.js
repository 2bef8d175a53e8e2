// A husk policy plugin. husk calls `onCreate` before it creates each
// container; it answers allow, deny(reason) or mutate(edits). The types are
// those of `wit/` (husk:plugin@0.1.0): records are objects with camelCase
// keys, variants `{ tag, val }` with the WIT case names, options `null` or
// the value. See husk's docs/plugin-guide.md.
//
// Each call runs in a fresh instance: globals do not survive between calls.

import config from "husk:plugin/config@0.1.0";

export const policyHooks = {
  onCreate(container) {
    // Deny: with `deny-env = "NAME"` in the plugin's config, a container
    // that sets NAME is refused. Put your own checks here (capabilities,
    // mounts, image, user...: see container-view in wit/types.wit).
    const name = config.get("deny-env");
    if (name !== null && container.env.some((e) => e.name === name)) {
      return { tag: "deny", val: `environment variable ${name} is not allowed` };
    }
    // Mutate: with `add-annotation = "KEY=VALUE"`, the container gets that
    // annotation. Other edits: set-env, drop-capability, add-mount,
    // set-readonly-rootfs, set-resource.
    const kv = config.get("add-annotation");
    if (kv !== null) {
      const eq = kv.indexOf("=");
      const [key, value] = eq < 0 ? [kv, ""] : [kv.slice(0, eq), kv.slice(eq + 1)];
      return { tag: "mutate", val: [{ tag: "add-annotation", val: { key, value } }] };
    }
    return { tag: "allow" };
  },
};
