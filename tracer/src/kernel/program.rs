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

/// The environment variable that makes droptrace treat the programs it names (a comma
/// list) as refused by the kernel: how the tests check that an optional part failing
/// leaves the rest working, on a kernel that accepts everything. Not for users.
pub const REFUSE_FOR_TEST: &str = "DROPTRACE_TEST_REFUSE_PROGRAMS";

/// Whether [`REFUSE_FOR_TEST`] names `program`; the refusal's reason if so.
pub fn refused_for_test(program: &str) -> Option<String> {
    let list = std::env::var(REFUSE_FOR_TEST).ok()?;
    list.split(',')
        .any(|p| p.trim() == program)
        .then(|| format!("refused on purpose ({REFUSE_FOR_TEST} names {program})"))
}

/// Turns a C string buffer into text, stopping at the first NUL. Invalid UTF-8 is kept
/// visible (lossy) and escaped later, at display time.
pub fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
