//! Fuzz entry point for the protocol decoder, used by `fuzz/` (cargo-fuzz) and by the smoke
//! test below, which runs it over a few thousand generated and mutated frames on stable Rust.

/// Fuzz entry point (used by `fuzz/` and by the fuzz smoke test): decode arbitrary bytes
/// as a stream of frames in both directions; must never panic.
pub fn decode(data: &[u8]) {
    let mut reader = crate::protocol::FrameReader::new(data);
    for _ in 0..64 {
        match reader.read::<crate::protocol::Request>() {
            Ok(Some(req)) => {
                let _ = crate::protocol::encode(&req);
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                if !e.is_recoverable() {
                    break;
                }
            }
        }
    }
    let mut reader = crate::protocol::FrameReader::new(data);
    while let Ok(Some(ev)) = reader.read::<crate::protocol::Response>() {
        let _ = crate::protocol::encode(&ev);
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{encode, Bytes, ExecRequest, Request, Response};

    /// xorshift64*: deterministic, seedable, enough for input mutation.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn seeds() -> Vec<Vec<u8>> {
        let reqs = [
            Request::Hello { version: 1 },
            Request::Health,
            Request::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "id".into()],
                env: vec![("A".into(), "B".into())],
                cwd: Some("/".into()),
                tty: None,
            }),
            Request::Stdin {
                data: Bytes(vec![0, 1, 2, 255]),
            },
            Request::Signal { signal: 9 },
            Request::SetClock {
                unix_nanos: 1_700_000_000_000_000_000,
            },
            Request::MountShare {
                tag: "home".into(),
                path: "/Users/x".into(),
            },
            Request::Shutdown { reboot: true },
        ];
        let resps = [
            Response::Hello {
                version: 1,
                agent: "a".into(),
            },
            Response::Stdout {
                data: Bytes(b"hello".to_vec()),
            },
            Response::Exited {
                code: Some(1),
                signal: None,
            },
            Response::Error {
                message: "x".into(),
            },
        ];
        let mut v: Vec<Vec<u8>> = reqs.iter().map(|r| encode(r).expect("encode")).collect();
        v.extend(resps.iter().map(|r| encode(r).expect("encode")));
        v.push(b"{\"type\":\"stdin\",\"data\":\"!!!notbase64\"}\n".to_vec());
        v.push(b"{\"type\":\"exec\",\"argv\":[1,2,3]}\n".to_vec());
        v.push(vec![b'{'; 4096]);
        v
    }

    #[test]
    fn test_fuzz_smoke_decode_never_panics() {
        let seeds = seeds();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let dict: &[&[u8]] = &[
            b"{",
            b"}",
            b"\"",
            b"\n",
            b":",
            b",",
            b"\"type\"",
            b"null",
            b"-1",
            b"1e999",
            b"\\u0000",
            b"[]",
        ];
        for i in 0..5000 {
            let mut input = seeds[i % seeds.len()].clone();
            // Splice a second frame sometimes: multi-frame streams.
            if rng.below(4) == 0 {
                input.extend_from_slice(&seeds[rng.below(seeds.len())]);
            }
            for _ in 0..=rng.below(8) {
                let pos = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if !input.is_empty() => {
                        let p = pos.min(input.len() - 1);
                        input[p] = rng.next() as u8;
                    }
                    1 if pos < input.len() => {
                        input.remove(pos);
                    }
                    2 => {
                        let word = dict[rng.below(dict.len())];
                        input.splice(pos..pos, word.iter().copied());
                    }
                    _ => input.truncate(pos),
                }
            }
            super::decode(&input);
        }
        // Pure random bytes too.
        for _ in 0..1000 {
            let n = rng.below(512);
            let input: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            super::decode(&input);
        }
    }
}
