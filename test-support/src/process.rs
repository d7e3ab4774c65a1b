//! Running helper processes with captured output and a deadline.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// `PATH` given to every process started with a cleared environment.
pub(crate) const CLEAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just ends the capture; the exit status tells the rest.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to completion, feeding `stdin` and capturing stdout/stderr. A
/// process still running after `timeout` is killed (it is our own child).
pub(crate) fn run(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Captured, HarnessError> {
    let what = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| HarnessError::io(format!("starting `{what}`"), e))?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let feeder = match (child.stdin.take(), stdin) {
        (Some(mut pipe), Some(data)) => {
            let data = data.to_vec();
            // The child may exit without reading everything; a broken pipe is not our error.
            Some(thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::CommandTimeout {
                    command: what,
                    seconds: timeout.as_secs(),
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(HarnessError::io(format!("waiting for `{what}`"), e)),
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Captured {
        status,
        stdout,
        stderr,
    })
}
