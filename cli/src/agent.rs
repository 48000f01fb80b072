//! A client of the guest agent's control protocol (`guest_agent::protocol`), over hybrid vsock.
//! Blocking I/O: each use is one short exchange or one stream on its own thread.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use guest_agent::protocol::{
    self, ExecRequest, FrameReader, Health, PortEvent, ProtocolError, Request, Response,
};

use crate::vsock::{self, VsockError};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("Cannot reach the VM's vsock socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("Guest agent protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("Guest agent answered: {0}")]
    Remote(String),
}

/// One control connection.
pub struct Agent {
    reader: FrameReader<UnixStream>,
    writer: UnixStream,
    pub description: String,
}

impl Agent {
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, AgentError> {
        let s = vsock::connect_blocking(uds, protocol::CONTROL_PORT, timeout)?;
        s.set_read_timeout(Some(timeout))
            .map_err(|source| AgentError::Socket {
                path: uds.display().to_string(),
                source,
            })?;
        let mut writer = s.try_clone().map_err(|source| AgentError::Socket {
            path: uds.display().to_string(),
            source,
        })?;
        let mut reader = FrameReader::new(s);
        let description = protocol::handshake(&mut reader, &mut writer)?;
        Ok(Agent {
            reader,
            writer,
            description,
        })
    }

    /// A second handle on the connection, for a thread that sends alongside the reader.
    fn clone_writer(&self) -> Result<UnixStream, AgentError> {
        self.writer
            .try_clone()
            .map_err(|source| AgentError::Socket {
                path: "vsock".into(),
                source,
            })
    }

    fn call(&mut self, req: &Request) -> Result<Response, AgentError> {
        protocol::write_frame(&mut self.writer, req)?;
        match self.reader.expect::<Response>()? {
            Response::Error { message } => Err(AgentError::Remote(message)),
            r => Ok(r),
        }
    }

    pub fn health(&mut self) -> Result<Health, AgentError> {
        match self.call(&Request::Health)? {
            Response::Health(h) => Ok(h),
            other => Err(ProtocolError::Unexpected(format!("{other:?}")).into()),
        }
    }

    /// Asks the guest to sync and power off (or reboot).
    pub fn shutdown(&mut self, reboot: bool) -> Result<(), AgentError> {
        self.call(&Request::Shutdown { reboot }).map(|_| ())
    }

    /// Sets the guest clock to the host's.
    pub fn sync_clock(&mut self) -> Result<(), AgentError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.call(&Request::SetClock { unix_nanos: now })
            .map(|_| ())
    }

    /// Starts watching listening ports; the agent first reports every current listener.
    pub fn watch_ports(mut self) -> Result<PortWatch, AgentError> {
        protocol::write_frame(&mut self.writer, &Request::WatchPorts)?;
        let _ = self.reader.get_ref().set_read_timeout(None);
        Ok(PortWatch {
            reader: self.reader,
        })
    }

    /// Runs a command, streaming its output to `stdout`/`stderr` and `stdin` to it;
    /// returns its exit code (128 + signal when killed). With `req.tty` the host terminal's
    /// size changes (fd 0) are passed on.
    pub fn exec(
        mut self,
        req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, AgentError> {
        let req_tty = req.tty.is_some();
        protocol::write_frame(&mut self.writer, &Request::Exec(req))?;
        let _ = self.reader.get_ref().set_read_timeout(None);
        match self.reader.expect::<Response>()? {
            Response::Started { .. } => {}
            Response::Error { message } => return Err(AgentError::Remote(message)),
            other => return Err(ProtocolError::Unexpected(format!("{other:?}")).into()),
        }
        if req_tty {
            // The terminal's size follows the host's. Polled rather than caught as SIGWINCH:
            // no process-wide signal handler for one CLI call, and a 250 ms lag on a resize is
            // not noticeable.
            let mut w = self.clone_writer()?;
            std::thread::spawn(move || {
                let mut last = crate::terminal::size(0);
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let now = crate::terminal::size(0);
                    if now != last {
                        if let Some(size) = now {
                            if protocol::write_frame(&mut w, &Request::Resize(size)).is_err() {
                                return;
                            }
                        }
                        last = now;
                    }
                }
            });
        }
        if let Some(mut input) = stdin {
            let mut w = self.clone_writer()?;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; protocol::MAX_CHUNK];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = protocol::write_frame(&mut w, &Request::CloseStdin);
                            return;
                        }
                        Ok(n) => {
                            let msg = Request::Stdin {
                                data: protocol::Bytes(buf[..n].to_vec()),
                            };
                            if protocol::write_frame(&mut w, &msg).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        } else {
            protocol::write_frame(&mut self.writer, &Request::CloseStdin)?;
        }
        loop {
            match self.reader.expect::<Response>()? {
                Response::Stdout { data } => {
                    let _ = stdout.write_all(&data.0).and_then(|_| stdout.flush());
                }
                Response::Stderr { data } => {
                    let _ = stderr.write_all(&data.0).and_then(|_| stderr.flush());
                }
                Response::Exited { code, signal } => {
                    return Ok(code.unwrap_or_else(|| 128 + signal.unwrap_or(0)));
                }
                Response::Error { message } => return Err(AgentError::Remote(message)),
                _ => {}
            }
        }
    }
}

/// A stream of port events.
pub struct PortWatch {
    reader: FrameReader<UnixStream>,
}

impl PortWatch {
    /// The next event; `None` when the guest closed the stream (shutdown, reboot).
    pub fn next_event(&mut self) -> Option<PortEvent> {
        loop {
            match self.reader.read::<Response>() {
                Ok(Some(Response::Port(ev))) => return Some(ev),
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) if e.is_recoverable() => continue,
                Err(_) => return None,
            }
        }
    }
}
