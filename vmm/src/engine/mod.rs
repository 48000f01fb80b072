//! Engines that run a VM: `builtin` (this VMM) and `qemu` (a fallback through QEMU).
