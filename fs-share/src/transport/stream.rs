//! Raw FUSE messages over a byte stream: the guest side of `vmctl mount`.
//!
//! The peer (the host's `/dev/fuse` bridge) writes each request exactly as its kernel
//! produced it — `fuse_in_header` first, whose first `u32` is the whole message length — and
//! reads back each reply whole (`fuse_out_header`, first `u32` = length). Requests without a
//! reply (FORGET, BATCH_FORGET, INTERRUPT) produce no bytes. No extra framing.
//!
//! Both ends read messages with [`read_message`], which bounds the length before allocating
//! anything: a length below the header size or above [`max_message`] ends the session with
//! [`StreamError::BadLength`]; a stream that ends inside a message gives
//! [`StreamError::Truncated`]. Neither side trusts the other's bytes.
//!
//! Why a memfd: fuse-backend-rs' `FuseDevWriter` (the only writer for `/dev/fuse`-format
//! replies) writes each reply to a file descriptor with one `write`/`writev`, which on a
//! socket may be short and would then lose bytes. Writing into an in-memory file is never
//! short, needs no size tuning (unlike a SOCK_SEQPACKET pair, whose messages must fit the
//! socket buffer) and no extra thread; the reply is then read back and written to the
//! stream whole with `write_all`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};

use crate::sys::PassthroughFs;

/// Size of `fuse_in_header`, the smallest request.
pub const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
/// Size of `fuse_out_header`, the smallest reply.
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
/// Pages of data in the largest request or reply (fuse-backend-rs negotiates
/// `max_write = max_pages = 256` pages, and the host mounts with the same `max_read`).
const MAX_DATA_PAGES: usize = 256;
/// Room for the headers in front of the data (libfuse's and fuse-backend-rs' `FUSE_HEADER_SIZE`).
const HEADER_ROOM: usize = 4096;

/// Largest message either side accepts: 256 pages of data (what `max_write`/`max_read` are
/// negotiated to) plus 4 KiB for the headers, as libfuse sizes its `/dev/fuse` buffer.
pub fn max_message() -> usize {
    MAX_DATA_PAGES * page_size() + HEADER_ROOM
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(4096)
}

/// Why a FUSE stream session ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("FUSE message length {len} is outside {min}..={max}")]
    BadLength { len: usize, min: usize, max: usize },
    #[error("The stream ended in the middle of a FUSE message")]
    Truncated,
    #[error("Cannot read the FUSE stream")]
    Read(#[source] io::Error),
    #[error("Cannot write the FUSE stream")]
    Write(#[source] io::Error),
    #[error("Cannot use the in-memory reply buffer")]
    Sink(#[source] io::Error),
}

/// Reads one whole message into `buf` (resized to its length; its capacity is reused) and
/// returns the length, or `None` at a clean end of stream before the message's first byte.
/// `min` is the header size of the expected kind of message, `max` the bound.
pub fn read_message<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut Vec<u8>,
    min: usize,
    max: usize,
) -> Result<Option<usize>, StreamError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < len_bytes.len() {
        match r.read(&mut len_bytes[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(StreamError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::Read(e)),
        }
    }
    // FUSE headers are in the host's byte order; both ends of a vmctl mount are the same
    // architecture (the guest runs the host's arch, or TCG emulates a little-endian one).
    let len = u32::from_ne_bytes(len_bytes) as usize;
    if len < min.max(len_bytes.len()) || len > max {
        return Err(StreamError::BadLength { len, min, max });
    }
    buf.clear();
    buf.extend_from_slice(&len_bytes);
    buf.resize(len, 0);
    r.read_exact(&mut buf[len_bytes.len()..]).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            StreamError::Truncated
        } else {
            StreamError::Read(e)
        }
    })?;
    Ok(Some(len))
}

/// Worker threads the guest agent gives [`serve`]. One: measured under TCG (2 vCPUs, 100 MiB
/// `dd` both ways, `ls -R /usr`, `cat` of every file under /usr through `vmctl mount`), four
/// workers were never faster and up to 2× slower on small requests (every request then costs
/// a futex wakeup, and cross-vCPU wakeups are expensive under emulation); the passthrough never
/// blocks for long (it opens only regular files and directories). Worth re-measuring on KVM.
pub const WORKERS: usize = 1;

/// Serves `fs` over a stream: reads requests from `input` until it ends, writes each reply
/// whole to `output`. Returns `Ok` when the peer closes the stream between messages or
/// while a reply is due (it wants none then), an error for anything else.
///
/// With `workers > 1`, each worker takes its turn reading one request (under a lock, as
/// libfuse's threads share `/dev/fuse`), handles it while the next worker reads, and writes
/// its reply whole under another lock; replies may thus go out in any order (FUSE matches them
/// by `unique`). No request is handed between threads: under TCG a cross-thread wakeup per
/// request costs more than the parallelism wins for small requests.
pub fn serve<R: Read + Send, W: Write + Send>(
    fs: Arc<PassthroughFs>,
    input: R,
    output: W,
    workers: usize,
) -> Result<(), StreamError> {
    let server = Server::new(fs);
    let max = max_message();
    let input = Mutex::new(input);
    let output = Mutex::new(output);
    let done = AtomicBool::new(false);
    let work = || -> Result<(), StreamError> {
        let mut handler = Handler::new(&server, max)?;
        let mut request = Vec::new();
        loop {
            let len = {
                let mut input = input.lock().unwrap_or_else(|e| e.into_inner());
                if done.load(Ordering::SeqCst) {
                    return Ok(());
                }
                match read_message(&mut *input, &mut request, IN_HEADER_LEN, max) {
                    Ok(Some(len)) => len,
                    other => {
                        done.store(true, Ordering::SeqCst);
                        return other.map(|_| ());
                    }
                }
            };
            let reply = handler.handle(request.get_mut(..len).unwrap_or_default());
            let reply = reply.inspect_err(|_| done.store(true, Ordering::SeqCst))?;
            if !reply.is_empty() {
                let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = out.write_all(reply) {
                    done.store(true, Ordering::SeqCst);
                    // The peer closed the stream while this request was being answered (an
                    // unmount racing its last requests): it wants no reply, a clean end.
                    return match e.kind() {
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Ok(()),
                        _ => Err(StreamError::Write(e)),
                    };
                }
            }
        }
    };
    if workers <= 1 {
        return work();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..workers).map(|_| scope.spawn(work)).collect();
        let mut result = work();
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(StreamError::Sink(io::Error::other("worker panicked"))));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// One worker's buffers: the reply sink and the writer's scratch space.
struct Handler<'a> {
    server: &'a Server<Arc<PassthroughFs>>,
    sink: File,
    scratch: Vec<u8>,
    reply: Vec<u8>,
    max: usize,
}

impl<'a> Handler<'a> {
    fn new(server: &'a Server<Arc<PassthroughFs>>, max: usize) -> Result<Self, StreamError> {
        Ok(Handler {
            server,
            sink: reply_sink().map_err(StreamError::Sink)?,
            scratch: vec![0u8; max],
            reply: Vec::with_capacity(max),
            max,
        })
    }

    /// Executes one whole request; returns its reply (empty for FORGET and the like).
    fn handle(&mut self, request: &mut [u8]) -> Result<&[u8], StreamError> {
        // Both constructors only wrap the buffers; they cannot fail.
        let reader = Reader::from_fuse_buffer(FuseBuf::new(request))
            .map_err(|e| StreamError::Read(io::Error::other(e.to_string())))?;
        let writer = FuseDevWriter::<()>::new(self.sink.as_raw_fd(), &mut self.scratch)
            .map_err(|e| StreamError::Sink(io::Error::other(e.to_string())))?;
        if let Err(e) = self
            .server
            .handle_message(reader, writer.into(), None, None)
        {
            // A request the server could not decode; it has replied with an error where
            // it could. The session goes on, as with /dev/fuse.
            tracing::debug!("fuse request failed: {e}");
        }
        let n = self.sink.stream_position().map_err(StreamError::Sink)?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.max)
            .ok_or_else(|| StreamError::Sink(io::Error::other("reply larger than max")))?;
        self.reply.resize(n, 0);
        if n > 0 {
            self.sink
                .read_exact_at(&mut self.reply, 0)
                .map_err(StreamError::Sink)?;
            self.sink
                .seek(SeekFrom::Start(0))
                .map_err(StreamError::Sink)?;
        }
        Ok(&self.reply)
    }
}

/// An anonymous in-memory file that collects one reply at a time.
fn reply_sink() -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the call creates a new fd and
    // touches no memory of ours.
    let fd = unsafe { libc::memfd_create(c"fuse-reply".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created above and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Fuzz entry (`fuzz/fuzz_targets/fuse_stream.rs` and `tests/stream.rs`): `data` as the whole
/// byte stream the host sends, served to `fs`; replies are discarded. Must return (never
/// panic, never hang) whatever the bytes are.
pub fn fuzz_session(fs: &Arc<PassthroughFs>, data: &[u8]) -> Result<(), StreamError> {
    serve(fs.clone(), data, io::sink(), 1)
}
