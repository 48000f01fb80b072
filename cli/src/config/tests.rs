// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use super::*;

fn parse_err(text: &str) -> String {
    ConfigFile::parse(text, "/i/config.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn test_config_file_set_get_save_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    let mut c = ConfigFile::load(&p).unwrap();
    c.set("cpus", "3").unwrap();
    c.set("memory", "2G").unwrap();
    c.set("mounts", "/srv:/data:ro").unwrap();
    c.set("nested", "true").unwrap();
    assert!(c.set("cpus", "0").is_err());
    assert!(c.set("nope", "1").is_err());
    assert!(c.set("memory", "12M").is_err());
    c.save(&p).unwrap();
    let back = ConfigFile::load(&p).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.get("memory").unwrap(), "2GiB");
    assert_eq!(back.get("mounts").unwrap(), "/srv:/data:ro");
    let r = back.resolve().unwrap();
    assert_eq!(
        (r.cpus, r.memory_mib, r.engine, r.nested),
        (3, 2048, EngineChoice::Auto, true)
    );
}

#[test]
fn test_config_syntax_error_names_file_and_line() {
    let e = parse_err("cpus = 2\nmounts = [\"/a\"\n");
    assert!(e.starts_with("/i/config.toml line "), "{e}");
    assert!(e.contains("vmctl config edit"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn test_config_unknown_key_lists_known_keys() {
    let e = parse_err("cpus = 2\n\nwat = 1\n");
    assert!(e.contains("line 3") && e.contains("\"wat\""), "{e}");
    assert!(e.contains(KEY_LIST), "{e}");
}

#[test]
fn test_config_bad_value_names_line_key_and_fix() {
    let e = parse_err("# c\ncpus = \"many\"\n");
    assert!(e.contains("line 2: cpus:"), "{e}");
    assert!(e.contains("vmctl config set cpus 2"), "{e}");
    let e = parse_err("memory = \"4XB\"");
    assert!(e.contains("line 1: memory:") && e.contains("unit"), "{e}");
    let e = parse_err("mounts = \"/a\"");
    assert!(e.contains("mounts:") && e.contains("list"), "{e}");
    let e = parse_err("[engine]\nx = 1");
    assert!(e.contains("engine:"), "{e}");
}

#[test]
fn test_config_non_utf8_and_huge_file_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, b"cpus = 2\nmemory = \"\xff\"\n").unwrap();
    let e = ConfigFile::load(&p).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
    std::fs::write(&p, vec![b'#'; 100_000]).unwrap();
    let e = ConfigFile::load(&p).unwrap_err().to_string();
    assert!(e.contains("too big"), "{e}");
}

#[test]
fn test_config_empty_file_is_defaults() {
    assert_eq!(ConfigFile::parse("", "x").unwrap(), ConfigFile::default());
    let c = ConfigFile::default().resolve().unwrap();
    assert!((1..=8).contains(&c.cpus));
    assert!(c.share_home && !c.nested && c.mounts.is_empty());
}

#[test]
fn test_config_check_host_names_missing_folder() {
    let mut f = ConfigFile::default();
    f.set("mounts", "/nonexistent-vmctl-test").unwrap();
    let e = f.resolve().unwrap().check_host().unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent-vmctl-test") && e.contains("vmctl config set mounts"),
        "{e}"
    );
}

/// `EngineChoice::as_str` is what status, errors and `config get` print; it must be the
/// name the config file (serde) and `--engine` (clap) accept.
#[test]
fn test_engine_choice_names_agree_with_serde_and_clap() {
    use clap::ValueEnum;
    for e in EngineChoice::value_variants() {
        let serde_name = serde_json::to_value(e).expect("serialise");
        assert_eq!(serde_name.as_str(), Some(e.as_str()));
        let clap_name = e.to_possible_value().expect("a value");
        assert_eq!(clap_name.get_name(), e.as_str());
    }
}
