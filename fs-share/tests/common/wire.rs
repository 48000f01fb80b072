//! Raw FUSE requests and a deterministic RNG: shared by these tests and, through a
//! `#[path]` include, by the fuzz smoke test inside the crate (`src/fuzz.rs`).

/// Deterministic xorshift for the fuzz smoke tests, so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A raw FUSE request as a kernel writes it: `fuse_in_header` (len, opcode, unique, nodeid,
/// uid 0, gid 0, pid 1, padding; native byte order) followed by `body`.
pub fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = (fs_share::transport::stream::IN_HEADER_LEN + body.len()) as u32;
    let mut v = Vec::with_capacity(len as usize);
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&opcode.to_ne_bytes());
    v.extend_from_slice(&unique.to_ne_bytes());
    v.extend_from_slice(&nodeid.to_ne_bytes());
    for x in [0u32, 0, 1, 0] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v.extend_from_slice(body);
    v
}
