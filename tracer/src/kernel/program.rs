//! What droptrace's programs and their records need in words: load and verifier errors,
//! and the C strings records carry.

use aya::programs::ProgramError;

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A program error with the verifier's last lines, which say why it refused.
pub fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                io_error.to_string()
            } else {
                format!("{io_error}; verifier: {}", tail.join(" | "))
            }
        }
        other => error_chain(other),
    }
}

/// Turns a C string buffer into text, stopping at the first NUL. Invalid UTF-8 is kept
/// visible (lossy) and escaped later, at display time.
pub fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
