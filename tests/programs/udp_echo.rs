//! A UDP echo server for the port-forwarding tests, built static (musl) and copied into a
//! test container image: busybox as Debian ships it has no UDP server applet.
//! Usage: udp-echo PORT. Each datagram is answered with `echo:` and the datagram.

use std::net::UdpSocket;

fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| "7".into());
    let sock = match UdpSocket::bind(("0.0.0.0", port.parse::<u16>().unwrap_or(7))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo: bind port {port}: {e}");
            std::process::exit(1);
        }
    };
    let mut buf = [0u8; 65536];
    loop {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from);
        }
    }
}
