//! Running an external command with a timeout, for drivers that configure the guest through tools.
//!
//! Trove's drivers call `utils.execute_with_timeout(..., run_as_root=True, timeout=10)`. This is the
//! same with the standard library only: the child's output is drained on helper threads (so a chatty
//! child cannot fill a pipe and stall) while the calling thread polls for exit until the deadline.
//!
//! Command lines can hold secrets (`license_key=<key>`), so errors name a caller-chosen label instead
//! of the arguments, and the caller's secrets are masked in any output that ends up in a message.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How much of each output stream is kept for the error message; the rest is drained and dropped.
const OUTPUT_LIMIT: usize = 4096;

/// How long to wait for the output after the child has exited. A daemon started by an init script can
/// inherit the pipes and keep them open for its whole life, so the output is best-effort.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The program could not be started (not installed, not executable...).
    #[error("could not run {label}: {source}")]
    Spawn {
        /// What the command is called in messages; never holds arguments.
        label: String,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("{}", failed_text(label, status, output))]
    Failed {
        /// What the command is called in messages.
        label: String,
        /// The exit status.
        status: ExitStatus,
        /// Standard output then standard error, trimmed, secrets masked.
        output: String,
    },
    /// The command did not finish in time and was killed.
    #[error("Time out after waiting {} seconds when running proc: {label}", timeout.as_secs())]
    TimedOut {
        /// What the command is called in messages.
        label: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },
}

/// Trove shows a failed command as its output (`<stdout>\n<stderr>`), which is what usually explains
/// the failure; with no output at all, the exit status is all there is to say.
fn failed_text(label: &str, status: &ExitStatus, output: &str) -> String {
    if output.is_empty() {
        format!("{label} exited with {status}")
    } else {
        output.to_owned()
    }
}

/// Runs `argv` (the program, then its arguments) with standard input closed and waits at most
/// `timeout`. `label` names the command in errors; every string in `secrets` is replaced by `***` in
/// captured output.
pub fn run(
    argv: &[String],
    label: &str,
    secrets: &[&str],
    timeout: Duration,
) -> Result<(), CommandError> {
    let (program, args) = argv.split_first().ok_or_else(|| CommandError::Spawn {
        label: label.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
    })?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            label: label.to_owned(),
            source,
        })?;

    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Killing only the direct child is what Trove's subprocess timeout does too.
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::TimedOut {
                    label: label.to_owned(),
                    timeout,
                });
            }
            Ok(None) => {
                thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Spawn {
                    label: label.to_owned(),
                    source,
                });
            }
        }
    };
    if status.success() {
        return Ok(());
    }

    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
        let bytes = rx
            .and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
            .unwrap_or_default();
        mask(String::from_utf8_lossy(&bytes).trim_end(), secrets)
    };
    let out = collect(stdout);
    let err = collect(stderr);
    let output = match (out.is_empty(), err.is_empty()) {
        (true, _) => err,
        (false, true) => out,
        (false, false) => format!("{out}\n{err}"),
    };
    Err(CommandError::Failed {
        label: label.to_owned(),
        status,
        output: output.trim().to_owned(),
    })
}

/// Reads a pipe to its end on a helper thread, keeping the first [`OUTPUT_LIMIT`] bytes.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        // The receiver may have given up waiting; nothing to do then.
        let _ = tx.send(kept);
    });
    rx
}

fn mask(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |acc, secret| acc.replace(secret, "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn success() {
        run(&sh("exit 0"), "true", &[], Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn failure_reports_output_with_secrets_masked() {
        let err = run(
            &sh("echo out key=s3cret; echo err >&2; exit 3"),
            "tool",
            &["s3cret"],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }));
        assert_eq!(err.to_string(), "out key=***\nerr");
    }

    #[test]
    fn failure_without_output_reports_status() {
        let err = run(&sh("exit 4"), "tool", &[], Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.to_string(), "tool exited with exit status: 4");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(
            &["/nonexistent/trove-rs-tool".to_owned()],
            "trove-rs-tool",
            &[],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert!(err.to_string().starts_with("could not run trove-rs-tool: "));
    }

    #[test]
    fn timeout_kills_the_child() {
        let started = Instant::now();
        let err = run(
            &["sleep".into(), "30".into()],
            "sleep",
            &[],
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(err, CommandError::TimedOut { .. }));
        assert_eq!(
            err.to_string(),
            "Time out after waiting 0 seconds when running proc: sleep"
        );
    }
}
