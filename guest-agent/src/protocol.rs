//! The vmctl host ↔ guest control protocol, version 1.
//!
//! Transport: a byte stream (vsock port [`CONTROL_PORT`] in the guest; any stream in
//! tests). Framing: one JSON object per line (`\n`-terminated, at most [`MAX_FRAME`]
//! bytes), tagged by `"type"`. Binary payloads (exec stdio) are base64 strings.
//!
//! A connection starts with [`Request::Hello`]; the agent answers [`Response::Hello`]
//! with its own version, and refuses other major versions. Then one request per
//! connection is the rule for streams (`Exec`, `WatchPorts`); the simple requests
//! (`Health`, `SetClock`, `MountShare`, `Shutdown`) may be repeated on one connection,
//! each answered by one response.
//!
//! Exec session: host sends `Exec`; agent answers `Started {pid}`, then streams `Stdout`
//! / `Stderr`; the host may send `Stdin`, `CloseStdin`, `Signal` and (with a terminal)
//! `Resize`; the agent ends with `Exited` and closes the connection. With
//! [`ExecRequest::tty`] the command runs on a pseudo-terminal in the guest: its output
//! (stdout and stderr merged, as on any terminal) comes as `Stdout`.
//!
//! Byte streams: after `Forward` (TCP), `ForwardUdp` (datagrams, each framed as a big-endian
//! `u16` length and the payload) and `ServeFs` (raw FUSE messages, self-delimited by the
//! `len` field of their headers) are answered `Ok`, the connection stops carrying frames.
//!
//! Both sides treat the peer's bytes as untrusted: frames are bounded, malformed lines
//! give a typed error instead of a panic (see `fuzz::decode`).

use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// vsock port of the agent's control server.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port bridged byte for byte to the guest's `/var/run/docker.sock`.
pub const DOCKER_PORT: u32 = 2375;
/// The host's vsock CID, as seen from the guest.
pub const HOST_CID: u32 = 2;
/// Largest frame either side accepts, newline included.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest stdio chunk the agent puts into one frame (base64 grows it by 4/3).
pub const MAX_CHUNK: usize = 64 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("I/O error on the control stream")]
    Io(#[from] std::io::Error),
    #[error("frame longer than {MAX_FRAME} bytes")]
    FrameTooLong,
    #[error("malformed frame")]
    Malformed(#[source] serde_json::Error),
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("peer closed the connection")]
    Closed,
}

impl ProtocolError {
    /// Whether the stream is still usable after this error (the bad frame was skipped).
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            ProtocolError::Malformed(_) | ProtocolError::Unexpected(_)
        )
    }
}

/// Raw bytes carried as a base64 string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// A command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run on a pseudo-terminal of this size (`vmctl shell`, `vmctl exec -t`).
    #[serde(default)]
    pub tty: Option<TtySize>,
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Largest datagram `ForwardUdp` carries (the IPv4 UDP payload limit).
pub const MAX_DATAGRAM: usize = 65507;

/// Host → guest messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
    },
    Health,
    Exec(ExecRequest),
    Stdin {
        data: Bytes,
    },
    CloseStdin,
    Signal {
        signal: i32,
    },
    Shutdown {
        reboot: bool,
    },
    SetClock {
        unix_nanos: u64,
    },
    WatchPorts,
    MountShare {
        tag: String,
        path: String,
    },
    /// Turn this connection into a byte stream to the guest's `addr:port`: the agent answers
    /// `Ok` and then splices, or `Error` when nothing accepts there. Without `addr` (or with
    /// a wildcard) the agent connects to `127.0.0.1:port`, then `[::1]:port`; a listener bound
    /// to one specific guest address (`docker run -p 127.0.0.1:8080:80`, a container IP) is
    /// reached at that address. Carries forwarded ports from the host.
    Forward {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
    },
    /// Like `Forward` for UDP: the agent answers `Ok` and then relays datagrams between this
    /// connection and a socket connected to the guest's `addr:port` (`127.0.0.1:port` without
    /// `addr`). Each datagram on the connection is a big-endian `u16` length followed by that
    /// many bytes (at most [`MAX_DATAGRAM`]). The relay ends when the host closes the
    /// connection.
    ForwardUdp {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
    },
    /// The terminal of a `tty` exec session changed size.
    Resize(TtySize),
    /// Serve the guest directory `path` over this connection as a FUSE filesystem
    /// (`vmctl mount`): after `Ok`, the host writes raw FUSE requests read from its
    /// `/dev/fuse` and the agent writes the raw replies; both are self-delimited by the
    /// `len` field of their headers.
    ServeFs {
        path: String,
        #[serde(default)]
        read_only: bool,
    },
    /// Host file events for the shared folder mounted at guest `path`: after `Ok`, the host
    /// writes one `fs_share::events` line per change on the host and the agent replays each
    /// so the guest's inotify watchers see it; it ends when the host closes the connection.
    ReplayEvents {
        path: String,
    },
}

/// One boot phase and when it ended, in milliseconds since the guest kernel started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub at_ms: u64,
}

/// The agent's answer to [`Request::Health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// dockerd answers `GET /_ping`.
    pub docker_ready: bool,
    pub uptime_ms: u64,
    pub phases: Vec<Phase>,
}

/// Transport protocol of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Proto {
    /// Whether this is a datagram (UDP) socket.
    pub fn is_udp(self) -> bool {
        matches!(self, Proto::Udp | Proto::Udp6)
    }
}

/// A guest socket started (`listening: true`) or stopped listening. For UDP, listening
/// means bound to a local port and not connected to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEvent {
    pub proto: Proto,
    pub addr: String,
    pub port: u16,
    pub listening: bool,
}

/// Guest → host messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello {
        version: u32,
        agent: String,
    },
    Health(Health),
    Ok,
    Error {
        message: String,
    },
    Started {
        pid: u32,
    },
    Stdout {
        data: Bytes,
    },
    Stderr {
        data: Bytes,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Port(PortEvent),
}

impl Request {
    /// The first message on every connection: this build's [`PROTOCOL_VERSION`].
    pub fn hello() -> Self {
        Request::Hello {
            version: PROTOCOL_VERSION,
        }
    }
}

/// Host side: checks the agent's answer to [`Request::hello`] and returns the agent's
/// self-description. Every host client (blocking [`handshake`], the supervisor's async
/// streams) checks the version here.
pub fn check_hello(reply: Response) -> Result<String, ProtocolError> {
    match reply {
        Response::Hello { version, agent } if version == PROTOCOL_VERSION => Ok(agent),
        Response::Hello { version, .. } => Err(ProtocolError::Version(version)),
        Response::Error { message } => Err(ProtocolError::Unexpected(message)),
        other => Err(ProtocolError::Unexpected(format!("{other:?}"))),
    }
}

/// Decodes one frame (a line, with or without its `\n`) read by a caller's own reader.
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(frame).map_err(ProtocolError::Malformed)
}

/// Serialize one message as a frame (JSON + `\n`).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut v = serde_json::to_vec(msg).map_err(ProtocolError::Malformed)?;
    v.push(b'\n');
    if v.len() > MAX_FRAME {
        return Err(ProtocolError::FrameTooLong);
    }
    Ok(v)
}

/// Write one message as a frame and flush.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads bounded frames from a byte stream.
pub struct FrameReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner: BufReader::new(inner),
            line: Vec::new(),
        }
    }

    /// The next message, `Ok(None)` at a clean end of stream. A malformed frame is
    /// consumed and reported ([`ProtocolError::is_recoverable`]); an over-long one is not.
    pub fn read<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, ProtocolError> {
        self.line.clear();
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                // A final frame without its newline: the peer was cut off mid-frame.
                return Err(ProtocolError::Closed);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_FRAME {
                return Err(ProtocolError::FrameTooLong);
            }
            self.line.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            if done {
                break;
            }
        }
        decode(&self.line).map(Some)
    }

    /// Like [`FrameReader::read`], with end of stream as [`ProtocolError::Closed`].
    pub fn expect<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, ProtocolError> {
        self.read()?.ok_or(ProtocolError::Closed)
    }

    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }
}

/// Host side: say hello on a fresh stream and check the agent's version.
/// Returns the agent's self-description.
pub fn handshake<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
) -> Result<String, ProtocolError> {
    write_frame(writer, &Request::hello())?;
    check_hello(reader.expect::<Response>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T>(msg: T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let bytes = encode(&msg).expect("encode");
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.read::<T>().expect("decode"), Some(msg));
        assert!(r.read::<T>().expect("eof").is_none());
    }

    #[test]
    fn test_forward_without_addr_decodes_as_loopback_request() {
        // What a host from before `addr` existed sends.
        let r: Request = serde_json::from_str(r#"{"type":"forward","port":80}"#).unwrap();
        assert_eq!(
            r,
            Request::Forward {
                port: 80,
                addr: None
            }
        );
        let line = serde_json::to_string(&Request::ForwardUdp {
            port: 53,
            addr: None,
        })
        .unwrap();
        assert!(!line.contains("addr"), "{line}");
    }

    #[test]
    fn test_messages_roundtrip() {
        roundtrip(Request::Hello { version: 1 });
        roundtrip(Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/".into()),
            tty: Some(TtySize { rows: 24, cols: 80 }),
        }));
        roundtrip(Request::ForwardUdp {
            port: 53,
            addr: None,
        });
        roundtrip(Request::ForwardUdp {
            port: 53,
            addr: Some("10.0.2.15".into()),
        });
        roundtrip(Request::Resize(TtySize {
            rows: 50,
            cols: 132,
        }));
        roundtrip(Request::ServeFs {
            path: "/".into(),
            read_only: true,
        });
        roundtrip(Request::Stdin {
            data: Bytes(vec![0, 1, 255, b'\n']),
        });
        roundtrip(Request::Forward {
            port: 8080,
            addr: Some("127.0.0.1".into()),
        });
        roundtrip(Request::SetClock {
            unix_nanos: u64::MAX,
        });
        roundtrip(Response::Exited {
            code: Some(3),
            signal: None,
        });
        roundtrip(Response::Port(PortEvent {
            proto: Proto::Tcp,
            addr: "0.0.0.0".into(),
            port: 80,
            listening: true,
        }));
    }

    #[test]
    fn test_wire_format_is_tagged_json_lines() {
        let v = encode(&Request::Shutdown { reboot: false }).expect("encode");
        assert_eq!(v, b"{\"type\":\"shutdown\",\"reboot\":false}\n");
        let v = encode(&Response::Stdout {
            data: Bytes(b"hi".to_vec()),
        })
        .expect("encode");
        assert_eq!(v, b"{\"type\":\"stdout\",\"data\":\"aGk=\"}\n");
    }

    #[test]
    fn test_malformed_frame_is_skipped_and_stream_continues() {
        let input = b"{\"type\":\"nope\"}\n{\"type\":\"health\"}\n";
        let mut r = FrameReader::new(&input[..]);
        let err = r.read::<Request>().expect_err("bad frame");
        assert!(err.is_recoverable());
        assert_eq!(r.read::<Request>().expect("next"), Some(Request::Health));
    }

    #[test]
    fn test_oversized_frame_is_refused() {
        let input = vec![b'a'; MAX_FRAME + 10];
        let mut r = FrameReader::new(&input[..]);
        assert!(matches!(
            r.read::<Request>(),
            Err(ProtocolError::FrameTooLong)
        ));
    }

    #[test]
    fn test_truncated_frame_is_closed_error() {
        let mut r = FrameReader::new(&b"{\"type\":\"health\""[..]);
        assert!(matches!(r.read::<Request>(), Err(ProtocolError::Closed)));
    }

    #[test]
    fn test_handshake_rejects_other_version() {
        let reply = encode(&Response::Hello {
            version: 2,
            agent: "x".into(),
        })
        .expect("encode");
        let mut r = FrameReader::new(&reply[..]);
        let mut out = Vec::new();
        assert!(matches!(
            handshake(&mut r, &mut out),
            Err(ProtocolError::Version(2))
        ));
        assert_eq!(out, encode(&Request::Hello { version: 1 }).expect("encode"));
    }
}
