//! Running the host tools the backend drives (`ip`, `nft`), with their
//! stderr kept for the error message.
//!
//! Called from whichever thread creates, changes or tears down a network;
//! each call waits for the tool to exit. A command line is never built by a
//! shell: arguments go to `execve` as they are, and scripts go on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

/// A tool that could not be run or that reported failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run `{cmd}`: {source} (is {tool} installed and on PATH?)")]
    Spawn {
        cmd: String,
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

/// Runs `argv` with `stdin` fed to it; returns its stdout.
pub fn run(argv: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let cmd = argv.join(" ");
    let spawn_err = |source| Error::Spawn { cmd: cmd.clone(), tool: argv[0].to_string(), source };
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its stderr says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if stderr.is_empty() { format!("exited with {}", out.status) } else { stderr };
        return Err(Error::Failed { cmd, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
