//! Shell-like word splitting, as iptables-restore and ipset restore do it.
//!
//! iptables-save double-quotes arguments with spaces or odd characters and
//! backslash-escapes `"`, `\` and `'` inside them, e.g.
//! `--comment "web \"front\" door"`; splitting on spaces would break such
//! a rule into nonsense.

/// Splits `line` into words; `Err` describes an unterminated quote or a
/// trailing backslash.
pub(crate) fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut in_quotes = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => {
                    word.push(escaped);
                    in_word = true;
                }
                None => return Err("line ends with a lone backslash".to_string()),
            },
            '"' => {
                in_quotes = !in_quotes;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_quotes {
        return Err("unterminated double quote".to_string());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_plain_words_on_any_whitespace() {
        assert_eq!(
            split("  -A INPUT\t-j  ACCEPT ").unwrap(),
            ["-A", "INPUT", "-j", "ACCEPT"]
        );
    }

    #[test]
    fn keeps_quoted_spaces_and_escaped_quotes() {
        assert_eq!(
            split(r#"--comment "web \"front\" door" -j LOG --log-prefix "droptrace: ""#).unwrap(),
            [
                "--comment",
                r#"web "front" door"#,
                "-j",
                "LOG",
                "--log-prefix",
                "droptrace: "
            ]
        );
    }

    #[test]
    fn empty_quotes_are_an_empty_word() {
        assert_eq!(split(r#"--comment """#).unwrap(), ["--comment", ""]);
    }

    #[test]
    fn reports_unterminated_quote_and_lone_backslash() {
        assert!(split(r#"--comment "oops"#).is_err());
        assert!(split("abc \\").is_err());
    }
}
