//! Shell completion scripts: clap's, with `--netns` completing the namespaces that exist
//! when the user presses Tab (`ls /run/netns`) beside `all` and `host`, which a script
//! generated once cannot list.

/// The completion script for `shell`.
pub fn script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    // Into a buffer: clap_complete panics when its writer fails.
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "droptrace", &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    with_named_namespaces(shell, text).into_bytes()
}

/// Where the namespaces `ip netns add` names live.
const LIST_NAMES: &str = "ls /run/netns 2>/dev/null";

fn with_named_namespaces(shell: clap_complete::Shell, text: String) -> String {
    use clap_complete::Shell;
    match shell {
        Shell::Bash => text.replace(
            r#"compgen -W "all host" -- "${cur}""#,
            &format!(r#"compgen -W "all host $({LIST_NAMES})" -- "${{cur}}""#),
        ),
        Shell::Zsh => {
            // clap writes `((all\:"every namespace"\nhost\:"..."))` as the action; a
            // function lists the names at completion time.
            let Some(start) = text.find(r#":NAME|PATH|all:((all\:"#) else {
                return text;
            };
            let Some(len) = text[start..].find("))'") else {
                return text;
            };
            let action = text[start..start + len + 2].to_string();
            let text = text.replace(&action, ":NAME|PATH|all:_droptrace_netns");
            text.replacen(
                "#compdef droptrace\n",
                &format!(
                    "#compdef droptrace\n\n_droptrace_netns() {{\n    compadd -- all host ${{(f)\"$({LIST_NAMES})\"}}\n}}\n"
                ),
                1,
            )
        }
        Shell::Fish => format!(
            "{text}complete -c droptrace -l netns -f -a \"({LIST_NAMES})\" -d 'named network namespace'\n"
        ),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap_complete::Shell;

    #[test]
    fn netns_completes_the_names_in_run_netns() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = String::from_utf8(script(shell)).unwrap();
            assert!(s.contains(LIST_NAMES), "{shell}: no namespace listing");
        }
        let zsh = String::from_utf8(script(Shell::Zsh)).unwrap();
        assert!(zsh.contains(":NAME|PATH|all:_droptrace_netns'"), "{zsh}");
        assert!(!zsh.contains(r#":NAME|PATH|all:((all"#));
    }
}
