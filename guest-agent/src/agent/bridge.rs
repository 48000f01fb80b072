//! Byte-for-byte bridges between a host-facing stream (vsock or TCP) and the guest's
//! Docker socket. Each direction is copied until EOF, then half-closed, so HTTP
//! keep-alive, hijacked `docker attach` streams and long event streams all pass.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::vsock::{VsockListener, VsockStream};
use tracing::info;

/// The guest's Docker API socket.
pub const DOCKER_SOCK: &str = "/var/run/docker.sock";

/// A bidirectional stream that can be split and half-closed.
pub trait Duplex: Read + Write + Send + 'static + Sized {
    fn split(&self) -> io::Result<Self>;
    fn close_write(&self);
}

impl Duplex for UnixStream {
    fn split(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for TcpStream {
    fn split(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for VsockStream {
    fn split(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copy `a` ↔ `b` until both directions reach EOF.
pub fn splice<A: Duplex, B: Duplex>(a: A, b: B) -> io::Result<()> {
    let (mut a_rd, mut b_wr) = (a.split()?, b.split()?);
    let up = std::thread::spawn(move || {
        let r = io::copy(&mut a_rd, &mut b_wr);
        b_wr.close_write();
        r
    });
    let (mut b_rd, mut a_wr) = (b, a);
    let r = io::copy(&mut b_rd, &mut a_wr);
    a_wr.close_write();
    let _ = up.join();
    r.map(|_| ())
}

fn to_docker<S: Duplex>(peer: S, sock: &Path) {
    match UnixStream::connect(sock) {
        Ok(d) => {
            let _ = splice(peer, d);
        }
        Err(e) => info!("docker bridge: cannot connect {}: {e}", sock.display()),
    }
}

/// Serve vsock `port` → Docker socket, one thread per connection. Returns on bind error.
pub fn serve_vsock(port: u32) -> io::Result<()> {
    let l = VsockListener::bind(port)?;
    info!("docker bridge: vsock port {port} -> {DOCKER_SOCK}");
    loop {
        match l.accept() {
            Ok(s) => {
                std::thread::spawn(move || to_docker(s, Path::new(DOCKER_SOCK)));
            }
            Err(e) => {
                info!("docker bridge: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Serve TCP `0.0.0.0:port` → Docker socket (for hosts without vsock yet).
pub fn serve_tcp(port: u16) -> io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    info!("docker bridge: tcp port {port} -> {DOCKER_SOCK}");
    for s in l.incoming() {
        match s {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                std::thread::spawn(move || to_docker(s, Path::new(DOCKER_SOCK)));
            }
            Err(e) => info!("docker bridge: accept: {e}"),
        }
    }
    Ok(())
}
