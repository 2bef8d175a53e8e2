"""A husk policy plugin. husk calls `on_create` before it creates each
container; it answers allow, deny(reason) or mutate(edits). The types come
from `wit/` (husk:plugin@0.1.0): `componentize-py -d wit -w policy bindings .`
writes them out for your editor. See husk's docs/plugin-guide.md.

Each call runs in a fresh instance: globals do not survive between calls.
"""

from wit_world import exports
from wit_world.imports import config
from wit_world.imports.types import (
    ContainerView,
    Edit_AddAnnotation,
    KeyValue,
    Verdict,
    Verdict_Allow,
    Verdict_Deny,
    Verdict_Mutate,
)


class PolicyHooks(exports.PolicyHooks):
    def on_create(self, container: ContainerView) -> Verdict:
        # Deny: with `deny-env = "NAME"` in the plugin's config, a container
        # that sets NAME is refused. Put your own checks here (capabilities,
        # mounts, image, user...: see ContainerView).
        name = config.get("deny-env")
        if name is not None and any(e.name == name for e in container.env):
            return Verdict_Deny(f"environment variable {name} is not allowed")
        # Mutate: with `add-annotation = "KEY=VALUE"`, the container gets that
        # annotation. Other edits: Edit_SetEnv, Edit_DropCapability,
        # Edit_AddMount, Edit_SetReadonlyRootfs, Edit_SetResource.
        kv = config.get("add-annotation")
        if kv is not None:
            key, _, value = kv.partition("=")
            return Verdict_Mutate([Edit_AddAnnotation(KeyValue(key, value))])
        return Verdict_Allow()
