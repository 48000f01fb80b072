//! What can be wrong with a configuration, each message naming the file, the line or key,
//! what is wrong and the command that fixes it, on one line.

use super::KEY_LIST;

/// Errors reading, checking or changing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: not UTF-8 text; fix it with `vmctl config edit` \
         (or remove the file to start from the defaults)"
    )]
    NotUtf8 { path: String, line: usize },
    #[error(
        "{path} is {size} bytes, too big for a vmctl configuration (a few lines); \
         fix it with `vmctl config edit`"
    )]
    TooBig { path: String, size: u64 },
    #[error("{path} line {line}: {what}; fix it with `vmctl config edit`")]
    Syntax {
        path: String,
        line: usize,
        what: String,
    },
    #[error(
        "{path} line {line}: unknown key {key:?} (known keys: {KEY_LIST}); \
         remove it with `vmctl config edit`"
    )]
    UnknownKeyInFile {
        path: String,
        line: usize,
        key: String,
    },
    #[error(
        "{path} line {line}: {key}: {why}; fix it with `vmctl config set {key} {example}` \
         or `vmctl config edit`"
    )]
    InFile {
        path: String,
        line: usize,
        key: &'static str,
        why: String,
        example: &'static str,
    },
    #[error("Unknown key {0:?}; known keys: {KEY_LIST}")]
    UnknownKey(String),
    #[error("Invalid {key} {}: {why}", super::shown(value))]
    Value {
        key: &'static str,
        value: String,
        why: String,
    },
    /// A value that is well-formed but does not fit this host (a missing shared folder).
    #[error("{key}: {why}; fix it with `vmctl config set {key} ...` or `vmctl config edit`")]
    Host { key: &'static str, why: String },
    #[error("Cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
