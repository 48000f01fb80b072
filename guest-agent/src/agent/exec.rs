//! `Exec` sessions: run a command with piped stdio, or on a pseudo-terminal, streamed over
//! the control connection.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use guest_agent::protocol::{
    write_frame, Bytes, ExecRequest, FrameReader, ProtocolError, Request, Response, MAX_CHUNK,
};

use super::bridge::Duplex;
use super::pty::{self, Pty};
use super::reaper;
use super::sys;

/// Errors of one exec session.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("cannot open a pseudo-terminal")]
    Pty(#[source] std::io::Error),
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
        .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    let pty = match req.tty {
        Some(size) => {
            let p = Pty::open(size).map_err(ExecError::Pty)?;
            p.attach(&mut cmd).map_err(ExecError::Pty)?;
            Some(p)
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    let spawned = reaper::spawn(&mut cmd);
    // The command holds copies of the terminal's slave side until it is dropped; reading
    // the master only ends (EIO) once every copy is closed.
    drop(cmd);
    let (mut child, pid) = spawned.map_err(|e| ExecError::Spawn(prog.clone(), e))?;
    let out = Arc::new(Mutex::new(conn.split().map_err(ProtocolError::Io)?));
    write_frame(
        &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
        &Response::Started { pid: pid as u32 },
    )?;

    let mut pumps = Vec::new();
    let mut input: Option<Box<dyn Write + Send>> = None;
    let mut terminal = None;
    if let Some(p) = pty {
        let master = p.close_slave();
        let reader = master.try_clone().map_err(ExecError::Pty)?;
        input = Some(Box::new(master.try_clone().map_err(ExecError::Pty)?));
        terminal = Some(master);
        pumps.push(pump(reader, out.clone(), true));
    }
    if let Some(o) = child.stdout.take() {
        pumps.push(pump(o, out.clone(), true));
    }
    if let Some(e) = child.stderr.take() {
        pumps.push(pump(e, out.clone(), false));
    }
    if let Some(i) = child.stdin.take() {
        input = Some(Box::new(i));
    }
    let tty = terminal.is_some();
    // Host input: stdin data, EOF, signals, terminal size. Ends when the host closes or we
    // shut down.
    std::thread::spawn(move || {
        let mut stdin = input;
        loop {
            match reader.read::<Request>() {
                Ok(Some(Request::Stdin { data })) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data.0).is_err() {
                            stdin = None;
                        }
                    }
                }
                // A terminal has no end of input of its own; the user types exit or ^D.
                Ok(Some(Request::CloseStdin)) if !tty => stdin = None,
                Ok(Some(Request::Signal { signal })) if (1..=64).contains(&signal) => {
                    let _ = sys::kill(pid, signal);
                }
                Ok(Some(Request::Resize(size))) => {
                    if let Some(t) = &terminal {
                        let _ = pty::resize(t, size);
                    }
                }
                Ok(Some(_)) => {}
                Err(e) if e.is_recoverable() => {}
                Ok(None) | Err(_) => return,
            }
        }
    });

    let status = reaper::wait(&mut child, pid, None);
    for p in pumps {
        if tty {
            // A background job may keep the terminal open after the command exited: give
            // its last output a moment, not the job's whole life.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while !p.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        } else {
            let _ = p.join();
        }
    }
    let (code, signal) = status.map(sys::decode_status).unwrap_or((None, None));
    write_frame(
        &mut *out.lock().unwrap_or_else(|e| e.into_inner()),
        &Response::Exited { code, signal },
    )?;
    conn.close_write();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::protocol::{TtySize, PROTOCOL_VERSION};
    use std::os::unix::net::UnixStream;

    /// Runs `req` through the control server, feeding `input` after `Started`; returns the
    /// output and the exit code.
    fn run_session(req: ExecRequest, input: &[Request]) -> (String, Option<i32>) {
        let (host, agent) = UnixStream::pair().unwrap();
        std::thread::spawn(move || super::super::server::handle(agent));
        let mut w = host.try_clone().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut r = FrameReader::new(host);
        write_frame(
            &mut w,
            &Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .unwrap();
        r.expect::<Response>().unwrap();
        write_frame(&mut w, &Request::Exec(req)).unwrap();
        assert!(matches!(
            r.expect::<Response>().unwrap(),
            Response::Started { .. }
        ));
        for m in input {
            write_frame(&mut w, m).unwrap();
        }
        let mut out = Vec::new();
        loop {
            match r.expect::<Response>().unwrap() {
                Response::Stdout { data } | Response::Stderr { data } => out.extend(data.0),
                Response::Exited { code, .. } => {
                    return (String::from_utf8_lossy(&out).into(), code)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn tty_req(script: &str, rows: u16, cols: u16) -> ExecRequest {
        ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![],
            cwd: None,
            tty: Some(TtySize { rows, cols }),
        }
    }

    #[test]
    fn test_tty_session_echoes_input_and_returns_exit_code() {
        let stdin = Request::Stdin {
            data: Bytes(b"abc\n".to_vec()),
        };
        let (out, code) = run_session(
            tty_req("tty; read x; echo got:$x; stty size; exit 3", 30, 90),
            &[stdin, Request::CloseStdin],
        );
        assert!(out.contains("/dev/pts/"), "{out}");
        // The terminal echoes what was typed (CRLF: the terminal's line discipline is real;
        // the echo may come before or after the `tty` line), and the command reads it.
        assert_eq!(out.matches("abc\r\n").count(), 2, "echo + got:abc: {out:?}");
        assert!(out.contains("got:abc\r\n30 90\r\n"), "{out:?}");
        assert_eq!(code, Some(3));
    }

    #[test]
    fn test_tty_resize_reaches_the_command() {
        let (out, code) = run_session(
            tty_req("read x; stty size", 24, 80),
            &[
                Request::Resize(TtySize {
                    rows: 40,
                    cols: 120,
                }),
                Request::Stdin {
                    data: Bytes(b"\n".to_vec()),
                },
            ],
        );
        assert!(out.contains("40 120"), "{out:?}");
        assert_eq!(code, Some(0));
    }

    #[test]
    fn test_piped_session_keeps_stdout_and_stderr_apart() {
        let req = ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "test -t 1 || echo notty; exit 5".into(),
            ],
            env: vec![],
            cwd: None,
            tty: None,
        };
        let (out, code) = run_session(req, &[Request::CloseStdin]);
        assert_eq!(out, "notty\n");
        assert_eq!(code, Some(5));
    }
}
