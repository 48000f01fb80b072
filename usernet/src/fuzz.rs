//! Fuzz entry points for the frame input path, used by `fuzz/` (cargo-fuzz) and by the smoke
//! test below (mutated valid frames on stable Rust).

use std::sync::Mutex;

use crate::{Config, UserNet};

/// Feeds `data` as one guest frame to a fresh stack and processes it. Never panics.
pub fn fuzz_frame(data: &[u8]) {
    if let Ok(mut net) = UserNet::new(fuzz_config()) {
        net.receive_frame(data);
        net.process();
        let mut buf = vec![0u8; 65536];
        while net.next_frame(&mut buf).is_some() {}
    }
}

/// Feeds every `data` chunk (split after each 0xfe byte) as frames to one shared stack, so
/// state built by earlier frames (connections, flows) meets later ones.
pub fn fuzz_frames(data: &[u8]) {
    static NET: Mutex<Option<UserNet>> = Mutex::new(None);
    let Ok(mut guard) = NET.lock() else {
        return;
    };
    if guard.is_none() {
        *guard = UserNet::new(fuzz_config()).ok();
    }
    let Some(net) = guard.as_mut() else {
        return;
    };
    for frame in data
        .split(|_| false)
        .flat_map(|d| d.split_inclusive(|b| *b == 0xfe))
    {
        net.receive_frame(frame);
    }
    net.process();
    let mut buf = vec![0u8; 65536];
    while net.next_frame(&mut buf).is_some() {}
}

fn fuzz_config() -> Config {
    Config {
        // Only the gateway (host loopback) is reachable, and DNS has no upstream: fuzzing
        // never sends traffic off this machine.
        outbound: false,
        resolv_conf: "/nonexistent/resolv.conf".into(),
        ..Config::default()
    }
}

// The integration tests' frame builders, shared rather than copied.
#[cfg(test)]
#[path = "../tests/common/frames.rs"]
mod test_frames;

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use smoltcp::wire::{DhcpMessageType, IpProtocol};

    use super::test_frames::*;

    /// Byte-level mutations of valid frames, fed through the fuzz entry point.
    #[test]
    fn test_fuzz_smoke_frame_input() {
        let seeds = [
            tcp_syn(40000, GW, 9, 1),
            udp((GUEST, 5000), (GW, 9), b"hello"),
            udp(
                (GUEST, 5353),
                (Ipv4Addr::new(10, 0, 2, 3), 53),
                &[
                    0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
                ],
            ),
            dhcp(DhcpMessageType::Discover, None),
            dhcp(DhcpMessageType::Request, Some(GUEST)),
            arp_request(GW, GUEST),
            ipv4(GUEST, GW, IpProtocol::Icmp, &[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut n = 0;
        for round in 0..4000 {
            let seed = &seeds[round % seeds.len()];
            let mut f = seed.clone();
            match rnd() % 4 {
                0 => {
                    for _ in 0..1 + rnd() % 4 {
                        let i = (rnd() as usize) % f.len();
                        f[i] ^= 1 << (rnd() % 8);
                    }
                }
                1 => f.truncate((rnd() as usize) % f.len()),
                2 => {
                    let i = 14 + (rnd() as usize) % (f.len() - 14);
                    f[i] = rnd() as u8;
                }
                _ => f.extend((0..rnd() % 64).map(|_| rnd() as u8)),
            }
            if round % 8 == 0 {
                super::fuzz_frame(&f);
            } else {
                super::fuzz_frames(&f);
            }
            n += 1;
        }
        assert_eq!(n, 4000);
    }
}
