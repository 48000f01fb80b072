//! The Windows Hypervisor Platform backend (x86_64 Windows).
