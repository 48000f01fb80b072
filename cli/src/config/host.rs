//! The host's size, and the defaults derived from it: CPUs all but one (1–8), memory a
//! quarter of the host's RAM, raised towards a half on small hosts so the VM gets 2 GiB when
//! half the host allows it.

/// Logical CPUs this process may use.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(2)
}

/// Total RAM in MiB (`MemTotal` of /proc/meminfo; 4 GiB where that cannot be read).
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(4096)
}

/// vCPUs by default: all of the host's but one, at least 1, at most 8.
pub fn default_cpus(host_cpus: u32) -> u32 {
    host_cpus.saturating_sub(1).clamp(1, 8)
}

/// Guest RAM by default: a quarter of the host's, but up to 2 GiB when that stays within
/// half of it; rounded down to 256 MiB, at least 256 MiB. Memory the guest frees is handed
/// back to the host (balloon free-page reporting), so this is a ceiling, not a reservation.
pub fn default_memory_mib(host_mib: u64) -> u64 {
    let quarter = host_mib / 4;
    let half = host_mib / 2;
    let want = quarter.max(half.min(2048));
    (want / 256 * 256).max(256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_default_cpus_all_but_one_within_1_to_8() {
        assert_eq!(default_cpus(0), 1);
        assert_eq!(default_cpus(1), 1);
        assert_eq!(default_cpus(2), 1);
        assert_eq!(default_cpus(4), 3);
        assert_eq!(default_cpus(64), 8);
    }

    #[test]
    fn test_default_memory_quarter_to_half_of_host() {
        assert_eq!(default_memory_mib(2048), 1024); // half
        assert_eq!(default_memory_mib(4096), 2048); // half
        assert_eq!(default_memory_mib(8192), 2048); // quarter
        assert_eq!(default_memory_mib(24 * 1024), 6 * 1024); // quarter
        assert_eq!(default_memory_mib(100), 256); // a floor for tiny hosts
        for host in [1024u64, 3000, 6000, 16384, 65536] {
            let m = default_memory_mib(host);
            assert!(m >= host / 4 / 256 * 256 && m <= host / 2, "{host}: {m}");
        }
    }
}
