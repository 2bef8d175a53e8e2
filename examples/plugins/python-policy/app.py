"""The example policy, in Python (componentize-py). Identical in behaviour
to the Rust, C, JavaScript and WAT versions (see ../README.md):

1. deny a privileged container: CAP_SYS_ADMIN in any capability set;
2. deny an environment variable that looks like a secret: its name contains
   SECRET, TOKEN or PASSWORD (any case), or its value starts with AKIA, ghp_
   or glpat-, or contains -----BEGIN;
3. deny an image outside the config's `allowed-registries` (comma separated;
   unset or empty allows any);
4. otherwise mutate: drop CAP_NET_RAW, add annotation io.husk.policy=checked.
"""

from wit_world import exports
from wit_world.imports import config
from wit_world.imports.types import (
    ContainerView,
    Edit_AddAnnotation,
    Edit_DropCapability,
    KeyValue,
    Verdict,
    Verdict_Deny,
    Verdict_Mutate,
)

SECRET_NAMES = ("SECRET", "TOKEN", "PASSWORD")
SECRET_PREFIXES = ("AKIA", "ghp_", "glpat-")


def registry(reference: str) -> str:
    """The registry of an image reference: its first component if that looks
    like a host (has a '.' or ':', or is 'localhost'), else docker.io."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def decide(c: ContainerView) -> Verdict:
    caps = c.capabilities
    if caps is not None:
        for cap_set in (caps.bounding, caps.effective, caps.permitted, caps.inheritable, caps.ambient):
            if "CAP_SYS_ADMIN" in cap_set:
                return Verdict_Deny("privileged container: CAP_SYS_ADMIN")
    for e in c.env:
        upper = e.name.upper()
        if (
            any(s in upper for s in SECRET_NAMES)
            or e.value.startswith(SECRET_PREFIXES)
            or "-----BEGIN" in e.value
        ):
            return Verdict_Deny(f"environment variable {e.name} looks like a secret")
    allowed = config.get("allowed-registries") or ""
    wanted = [r.strip() for r in allowed.split(",") if r.strip()]
    if wanted:
        if not c.image.reference:
            return Verdict_Deny(f"image reference is unknown; allowed registries: {allowed}")
        if registry(c.image.reference) not in wanted:
            return Verdict_Deny(
                f"image {c.image.reference} is not from an allowed registry ({allowed})"
            )
    return Verdict_Mutate(
        [
            Edit_DropCapability("CAP_NET_RAW"),
            Edit_AddAnnotation(KeyValue("io.husk.policy", "checked")),
        ]
    )


class PolicyHooks(exports.PolicyHooks):
    def on_create(self, container: ContainerView) -> Verdict:
        return decide(container)
