//! `vmctl`: the user's command and the per-instance supervisor.
//!
//! Status: not built yet (see the README status table).

fn main() {
    eprintln!("vmctl: not built yet; see README.md");
    std::process::exit(1);
}
