//! End-to-end test helpers: temp dirs, child processes killed on drop, timeouts.
//! The scenarios live in `tests/tests/`.
