"""Job hardening: seccomp, capabilities, no_new_privs, rlimits, masked /proc and read-only /sys.

How the runtime uses it (docs/security.md has the reasons):

* **Zygote, once, before forking any job:** ``compile_apart(PROFILE_NAMES)``, every
  profile compiled by a short-lived child (``compile_profile`` there), so libseccomp
  never loads into the zygote; a job only installs bytes.
* **Stage two, after the root is assembled and before pivot_root** (host paths
  still reachable, the job's /proc mounted at ``root/proc``):
  ``mount_sys_readonly(root)``, then ``mask_proc(root)``, then ``readonly_paths(root)``.
* **Stage two, after pivot_root and sethostname, right before exec, in this order:**
  ``apply_rlimits(limits)`` (raising a hard limit needs CAP_SYS_RESOURCE),
  ``drop_capabilities(keep)``, ``set_no_new_privs()``, the uid/gid switch, ``die_with_parent()``,
  ``install_bpf(bpf)`` and at once ``execve``.
"""

from typing import TYPE_CHECKING, Any

from capsa.runtime.security.bpf import PROFILE_NAMES, UNCONFINED, compile_apart, install_bpf
from capsa.runtime.security.capabilities import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_RLIMITS,
    CapabilitySets,
    apply_rlimits,
    current_capabilities,
    die_with_parent,
    drop_capabilities,
    no_new_privs,
    parse_capabilities,
    set_no_new_privs,
    validate_rlimits,
)
from capsa.runtime.security.procfs import (
    MASKED_PATHS,
    READONLY_PATHS,
    mask_proc,
    mount_sys_readonly,
    readonly_paths,
)

if TYPE_CHECKING:
    from capsa.runtime.security.seccomp import SeccompProfile, compile_profile, load_profile


def __getattr__(name: str) -> Any:
    # libseccomp (pyseccomp) loads on first use: the zygote installs compiled programs only (bpf.py).
    if name in ("SeccompProfile", "compile_profile", "load_profile"):
        from capsa.runtime.security import seccomp

        return getattr(seccomp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_RLIMITS",
    "MASKED_PATHS",
    "PROFILE_NAMES",
    "READONLY_PATHS",
    "UNCONFINED",
    "CapabilitySets",
    "SeccompProfile",
    "apply_rlimits",
    "compile_apart",
    "compile_profile",
    "current_capabilities",
    "die_with_parent",
    "drop_capabilities",
    "install_bpf",
    "load_profile",
    "mask_proc",
    "mount_sys_readonly",
    "no_new_privs",
    "parse_capabilities",
    "readonly_paths",
    "set_no_new_privs",
    "validate_rlimits",
]
