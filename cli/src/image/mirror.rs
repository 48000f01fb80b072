//! The Debian mirror the root image is built from: the host's own apt sources (one-line
//! `sources.list` and deb822 `.sources`), so builds use what this host can reach.

use std::path::Path;

/// The default when the host names no Debian mirror.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// First `deb` URI of a Debian main archive (not security/updates) in the given texts.
pub fn from_sources(list_files: &[String], deb822_files: &[String]) -> Option<String> {
    let plausible = |uri: &str| {
        (uri.starts_with("http://") || uri.starts_with("https://"))
            && !uri.contains("security")
            && uri.trim_end_matches('/').ends_with("/debian")
    };
    for text in list_files {
        for line in text.lines() {
            let mut w = line
                .split_ascii_whitespace()
                .filter(|t| !t.starts_with('['));
            if w.next() == Some("deb") {
                if let Some(uri) = w.next() {
                    if plausible(uri) {
                        return Some(uri.trim_end_matches('/').to_string());
                    }
                }
            }
        }
    }
    for text in deb822_files {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let types = field("Types:").unwrap_or_default();
            if !types.split_ascii_whitespace().any(|t| t == "deb") {
                continue;
            }
            if let Some(uris) = field("URIs:") {
                if let Some(u) = uris.split_ascii_whitespace().find(|u| plausible(u)) {
                    return Some(u.trim_end_matches('/').to_string());
                }
            }
        }
    }
    None
}

/// The host's Debian mirror, or [`DEFAULT_MIRROR`].
pub fn host_mirror() -> String {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let mut lists: Vec<String> = read(Path::new("/etc/apt/sources.list"))
        .into_iter()
        .collect();
    let mut deb822 = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|e| e.to_str()) {
                Some("list") => lists.extend(read(&p)),
                Some("sources") => deb822.extend(read(&p)),
                _ => {}
            }
        }
    }
    from_sources(&lists, &deb822).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mirror_from_deb822_skips_security() {
        let s = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                 Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n";
        assert_eq!(
            from_sources(&[], &[s.into()]).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn test_mirror_from_one_line_list() {
        let l = "# comment\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n";
        assert_eq!(
            from_sources(&[l.into()], &[]).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            from_sources(
                &["deb https://packages.cloud.google.com/apt x main".into()],
                &[]
            ),
            None
        );
    }
}
