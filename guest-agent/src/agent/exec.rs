//! `Exec` sessions: run a command with piped stdio streamed over the control connection.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use guest_agent::protocol::{
    write_frame, Bytes, ExecRequest, FrameReader, ProtocolError, Request, Response, MAX_CHUNK,
};

use super::bridge::Duplex;
use super::reaper;
use super::sys;

/// Errors of one exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("control stream")]
    Protocol(#[from] ProtocolError),
}

fn pump<R: Read + Send + 'static, W: Write + Send + 'static>(
    mut src: R,
    out: Arc<Mutex<W>>,
    stdout: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let data = Bytes(buf[..n].to_vec());
            let msg = if stdout {
                Response::Stdout { data }
            } else {
                Response::Stderr { data }
            };
            let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
            if write_frame(&mut *w, &msg).is_err() {
                return;
            }
        }
    })
}

/// Run one exec session on `conn` (after the handshake and the `Exec` request).
/// A command that cannot start is answered with `Error` and the session ends.
pub fn run<S: Duplex>(
    req: ExecRequest,
    reader: FrameReader<S>,
    mut conn: S,
) -> Result<(), ProtocolError> {
    match session(req, reader, &conn) {
        Err(ExecError::Protocol(p)) => Err(p),
        Err(e) => {
            let message = match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            };
            write_frame(&mut conn, &Response::Error { message })
        }
        Ok(()) => Ok(()),
    }
}

fn session<S: Duplex>(
    req: ExecRequest,
    mut reader: FrameReader<S>,
    conn: &S,
) -> Result<(), ExecError> {
    let Some((prog, args)) = req.argv.split_first() else {
        return Err(ExecError::EmptyArgv);
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    let (mut child, pid) =
        reaper::spawn(&mut cmd).map_err(|e| ExecError::Spawn(prog.clone(), e))?;
    let out = Arc::new(Mutex::new(conn.split().map_err(ProtocolError::Io)?));
    write_frame(
        &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
        &Response::Started { pid: pid as u32 },
    )?;

    let mut pumps = Vec::new();
    if let Some(o) = child.stdout.take() {
        pumps.push(pump(o, out.clone(), true));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(pump(e, out.clone(), false));
    }
    let stdin = child.stdin.take();
    // Host input: stdin data, EOF, signals. Ends when the host closes or we shut down.
    std::thread::spawn(move || {
        let mut stdin = stdin;
        loop {
            match reader.read::<Request>() {
                Ok(Some(Request::Stdin { data })) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data.0).is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(Some(Request::CloseStdin)) => stdin = None,
                Ok(Some(Request::Signal { signal })) if (1..=64).contains(&signal) => {
                    let _ = sys::kill(pid, signal);
                }
                Ok(Some(_)) => {}
                Err(e) if e.is_recoverable() => {}
                Ok(None) | Err(_) => return,
            }
        }
    });

    let status = reaper::wait(&mut child, pid, None);
    for p in pumps {
        let _ = p.join();
    }
    let (code, signal) = status.map(sys::decode_status).unwrap_or((None, None));
    write_frame(
        &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
        &Response::Exited { code, signal },
    )?;
    conn.close_write();
    Ok(())
}
