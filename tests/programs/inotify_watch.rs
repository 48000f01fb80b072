//! `inotify-watch FILE`: prints one line per inotify event on FILE (a container watching a
//! bind-mounted file, as file watchers in dev servers do). Static, no crates: it runs in a
//! busybox container.

use std::io::Write;

extern "C" {
    fn inotify_init1(flags: i32) -> i32;
    fn inotify_add_watch(fd: i32, path: *const u8, mask: u32) -> i32;
    fn read(fd: i32, buf: *mut u8, count: usize) -> isize;
}

const IN_MODIFY: u32 = 0x2;
const IN_ATTRIB: u32 = 0x4;
const IN_CLOSE_WRITE: u32 = 0x8;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: inotify-watch FILE");
        std::process::exit(2);
    };
    let mut c = path.clone().into_bytes();
    c.push(0);
    // SAFETY: plain syscalls on a NUL-terminated path and a buffer we own.
    unsafe {
        let fd = inotify_init1(0);
        if fd < 0 || inotify_add_watch(fd, c.as_ptr(), IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE) < 0 {
            eprintln!("inotify on {path} failed");
            std::process::exit(1);
        }
        println!("WATCHING {path}");
        let _ = std::io::stdout().flush();
        let mut buf = [0u8; 4096];
        loop {
            let n = read(fd, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                std::process::exit(1);
            }
            // struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; ... }
            let mask = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            println!("EVENT {path} mask={mask:#x}");
            let _ = std::io::stdout().flush();
        }
    }
}
