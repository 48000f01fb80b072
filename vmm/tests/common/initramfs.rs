//! A tiny initramfs (cpio "newc") for the Linux boot test.
//!
//! Written by hand: the format is 110-byte ASCII headers plus padding (~40 lines), and
//! the vmm crate's dev-dependencies (owned by the lead) have no cpio crate.

/// One archive member.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, u32, &'a [u8]),
    CharDev(&'a str, u32, u32),
}

fn push_header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Builds a newc archive from `entries`.
pub fn newc(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match e {
            Entry::Dir(name) => push_header(&mut out, ino, 0o040_755, 0, (0, 0), name),
            Entry::CharDev(name, major, minor) => {
                push_header(&mut out, ino, 0o020_600, 0, (*major, *minor), name)
            }
            Entry::File(name, perm, data) => {
                push_header(&mut out, ino, 0o100_000 | perm, data.len(), (0, 0), name);
                out.extend_from_slice(data);
                while out.len() % 4 != 0 {
                    out.push(0);
                }
            }
        }
    }
    push_header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}
