//! Escaping strings that come from the system before they reach a terminal.
//!
//! Process names, command lines, interface names and rule comments are chosen by whoever
//! controls the host or the process (`prctl(PR_SET_NAME)` takes any bytes). Printed raw,
//! an escape sequence could rewrite the screen of the engineer reading it, so every
//! control character and every invisible formatting character is shown as an escape.
//! JSON output needs none of this: serde_json escapes control characters itself.

use std::borrow::Cow;

/// Returns `s` with control, bidi and other invisible formatting characters escaped as
/// `\xNN` / `\u{NNNN}` and backslashes doubled; `s` itself when nothing needs escaping.
pub fn terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs_escape(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width and directional marks
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{feff}'
            | '\u{fffd}') // replacement char: the name had invalid UTF-8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_untouched() {
        assert!(matches!(terminal("java"), Cow::Borrowed("java")));
        assert_eq!(terminal("ñandú-worker"), "ñandú-worker");
    }

    #[test]
    fn escape_sequences_are_defused() {
        assert_eq!(
            terminal("\x1b[2J\x1b]0;pwned\x07"),
            "\\x1b[2J\\x1b]0;pwned\\x07"
        );
        assert_eq!(terminal("a\nb\tc\r"), "a\\x0ab\\x09c\\x0d");
        assert_eq!(terminal("\u{9b}31m"), "\\x9b31m");
    }

    #[test]
    fn invisible_and_bidi_characters_are_shown() {
        assert_eq!(terminal("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
        assert_eq!(terminal("a\\b"), "a\\\\b");
        assert_eq!(terminal("bad\u{fffd}utf8"), "bad\\u{fffd}utf8");
    }
}
