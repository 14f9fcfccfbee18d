//! What droptrace writes for people and tools: pcapng read back by tshark, completions
//! and the man page.

use std::process::Command;

use droptrace_tests::{CLIENT_V4, GATEWAY_V4, Netns, Topology, Watcher, drops, droptrace_output};

#[test]
fn pcapng_is_read_back_by_tshark_with_tuples_and_comments() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "5044", "-j", "DROP",
        ])
        .unwrap();
    let path = std::env::temp_dir().join(format!("dt-{}-drops.pcapng", std::process::id()));
    let file = path.to_str().unwrap();
    let w = Watcher::start(&["watch", "--netns", &t.client.name, "--write", file]).unwrap();
    t.client.udp_send(t.gateway_addr(5044), 3).unwrap();
    // A long datagram: its first 128 bytes from the IP header on are captured, which the
    // kernel program copies in two parts (what it parses, then the rest for records).
    let to = t.gateway_addr(5044);
    t.client
        .run(move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let _ = sock.send_to(&long_payload(), to);
        })
        .unwrap();
    let lines = w.stop().unwrap();
    assert!(!drops(&lines).is_empty());
    let out = Command::new("tshark")
        .args([
            "-r",
            file,
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "frame.comment",
            "-e",
            "data.data",
        ])
        .output()
        .expect("tshark");
    std::fs::remove_file(&path).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no packet: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let fields: Vec<&str> = first.split('|').collect();
    assert_eq!(&fields[..3], &[CLIENT_V4, GATEWAY_V4, "5044"], "{first}");
    assert!(
        fields[3].contains("dropped by filter/OUTPUT rule 1"),
        "{first}"
    );
    assert!(
        fields[3].contains("; process ") && fields[3].contains("; hook OUTPUT"),
        "{first}"
    );
    // 128 bytes captured: 20 of IPv4 header, 8 of UDP, 100 of payload.
    let want: String = long_payload()[..100]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        text.lines().any(|l| l
            .split('|')
            .nth(4)
            .is_some_and(|d| d.replace(':', "") == want)),
        "no packet with the long payload's first 100 bytes: {text}"
    );
}

/// 200 bytes that differ from one offset to the next.
fn long_payload() -> Vec<u8> {
    (0..200u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(3))
        .collect()
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let (code, bash, _) = droptrace_output(&["completions", "bash"]).unwrap();
    assert_eq!(code, 0);
    assert!(bash.contains("verify") && bash.contains("--dport"));
    let (code, man, _) = droptrace_output(&["man"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        man.contains(".TH droptrace"),
        "{}",
        &man[..man.len().min(200)]
    );
    let (code, _, _) = droptrace_output(&["completions", "tcsh"]).unwrap();
    assert_eq!(code, 2);
    // --netns and --proto complete their values, not file names.
    let netns = bash
        .split("--netns)")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default();
    assert!(
        netns.contains("compgen -W \"all host $(ls /run/netns"),
        "{netns}"
    );
    let proto = bash
        .split("--proto)")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_default();
    assert!(proto.contains("tcp udp icmp icmpv6 sctp"), "{proto}");
    // A page per subcommand, with what clap does not know.
    let (code, watch, _) = droptrace_output(&["man", "watch"]).unwrap();
    assert_eq!(code, 0);
    assert!(watch.contains(".TH droptrace-watch"));
    assert!(watch.contains("EXIT STATUS") && watch.contains("JSON OUTPUT"));
    let dir = std::env::temp_dir().join(format!("dt-man-{}", std::process::id()));
    let (code, listed, err) = droptrace_output(&["man", "--dir", dir.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{err}");
    for page in [
        "droptrace.1",
        "droptrace-watch.1",
        "droptrace-verify.1",
        "droptrace-audit.1",
    ] {
        assert!(dir.join(page).is_file(), "{page} not written: {listed}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // A reader that went away (`| head`) is not a crash: stdout is a pipe whose read end
    // is already closed, so every write fails with EPIPE.
    for args in [&["completions", "bash"][..], &["man", "watch"][..]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = Command::new(droptrace_tests::droptrace_bin())
            .args(args)
            .stdout(std::process::Stdio::from(write))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    // --version says which build: commit, target, and which eBPF objects are inside.
    let (code, version, _) = droptrace_output(&["--version"]).unwrap();
    assert_eq!(code, 0);
    assert!(
        version.starts_with("droptrace ")
            && version.contains("(commit ")
            && version.contains("-linux-")
            && version.contains("eBPF objects sha256 "),
        "{version}"
    );
    let (code, _, err) = droptrace_output(&["man", "nope"]).unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("droptrace-watch"), "{err}");
}

#[test]
fn top_prints_plain_tables_when_stdout_is_not_a_terminal() {
    let t = Topology::new().unwrap();
    t.client
        .exec(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "--dport",
            "1024:65535",
            "-j",
            "DROP",
        ])
        .unwrap();
    let mut child = Command::new(droptrace_tests::droptrace_bin())
        .args(["top", "--netns", &t.client.name, "--duration", "3s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut start = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut start).unwrap();
    for port in [8443, 9090, 5044, 8080] {
        t.client.udp_send(t.gateway_addr(port), 2).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let last_table = text.rsplit("DROPS/S").next().unwrap();
    for port in [8443, 9090, 5044, 8080] {
        assert!(
            last_table.contains(&format!("{GATEWAY_V4}:{port}")),
            "{port} missing: {text}"
        );
    }
    assert!(text.contains("8 drops in"), "{text}");
}

#[test]
fn unnamed_namespaces_show_a_pid_inside_and_resolve_names_destinations() {
    // A namespace with no name under /run/netns, held by one process.
    let mut holder = Command::new("unshare")
        .args(["-n", "bash", "-c", "ip link set lo up; iptables -A OUTPUT -p udp --dport 6554 -j DROP; sleep 3; echo x > /dev/udp/127.0.0.1/6554; sleep 2; echo x > /dev/udp/127.0.0.1/6554; sleep 2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let w = Watcher::start(&["watch", "--netns", "all", "--dport", "6554", "--resolve"]).unwrap();
    holder.wait().unwrap();
    let lines = w.stop().unwrap();
    let d = drops(&lines);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0]["netns_name"].is_null());
    assert!(d[0]["netns_pid"].as_u64().is_some(), "{}", d[0]);
    // The name arrives from the background resolver: the first line may come before it,
    // the second (two seconds later) must carry it (127.0.0.1 is in /etc/hosts).
    let name = d[0].get("dst_name");
    assert!(name.is_none_or(|n| n == "localhost"), "{}", d[0]);
    assert_eq!(d[1]["dst_name"], "localhost", "{}", d[1]);
}

/// Tab after `--netns` offers the namespaces that exist now, as bash itself completes it.
#[test]
fn bash_completes_a_named_namespace() {
    let ns = Netns::new("complete").unwrap();
    let (_, script, _) = droptrace_output(&["completions", "bash"]).unwrap();
    let file = std::env::temp_dir().join(format!("dt-{}-completion.bash", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let prefix = &ns.name[..ns.name.len() - 3];
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(droptrace watch --netns {prefix}); COMP_CWORD=3; \
             COMP_LINE='droptrace watch --netns {prefix}'; COMP_POINT=${{#COMP_LINE}}; \
             _droptrace droptrace {prefix} --netns; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let offered = String::from_utf8_lossy(&out.stdout);
    assert!(
        offered.lines().any(|l| l == ns.name),
        "{offered} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
