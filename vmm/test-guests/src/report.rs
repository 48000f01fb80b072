//! The line protocol on COM1: `TEST <name> ok|FAIL|skip <detail>` then `DONE pass=N fail=M`.

use core::fmt::Arguments;

/// Counts and prints results.
#[derive(Default)]
pub struct Report {
    pub pass: u32,
    pub fail: u32,
}

impl Report {
    pub fn ok(&mut self, name: &str, detail: Arguments<'_>) {
        self.pass += 1;
        crate::println!("TEST {name} ok {detail}");
    }

    pub fn fail(&mut self, name: &str, detail: Arguments<'_>) {
        self.fail += 1;
        crate::println!("TEST {name} FAIL {detail}");
    }

    pub fn skip(&mut self, name: &str, detail: Arguments<'_>) {
        crate::println!("TEST {name} skip {detail}");
    }

    /// `ok` when `good`, else `FAIL`, with the same detail.
    pub fn check(&mut self, name: &str, good: bool, detail: Arguments<'_>) {
        if good {
            self.ok(name, detail)
        } else {
            self.fail(name, detail)
        }
    }

    pub fn done(&self) {
        crate::println!("DONE pass={} fail={}", self.pass, self.fail);
    }
}
