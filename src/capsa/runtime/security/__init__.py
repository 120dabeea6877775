"""Job hardening: seccomp, capabilities, no_new_privs, rlimits, masked /proc and read-only /sys.

How the runtime uses it (docs/security.md has the reasons):

* **Zygote, once, before forking any job:** ``compile_profile(name)`` for every
  profile in :data:`PROFILE_NAMES` (cached; a job only installs bytes).
* **Stage two, after the root is assembled and before pivot_root** (host paths
  still reachable, the job's /proc mounted at ``root/proc``):
  ``mount_sys_readonly(root)``, then ``mask_proc(root)``, then ``readonly_paths(root)``.
* **Stage two, after pivot_root and sethostname, right before exec, in this order:**
  ``apply_rlimits(limits)`` (raising a hard limit needs CAP_SYS_RESOURCE),
  ``drop_capabilities(keep)``, ``set_no_new_privs()``, the uid/gid switch, ``die_with_parent()``,
  ``install_bpf(bpf)`` and at once ``execve``.
"""

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
from capsa.runtime.security.seccomp import (
    PROFILE_NAMES,
    UNCONFINED,
    SeccompProfile,
    compile_profile,
    install_bpf,
    load_profile,
)

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
