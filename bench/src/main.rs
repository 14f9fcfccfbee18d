//! `flood`: sends small UDP datagrams from one thread as fast as it can, for
//! `cargo xtask bench`. Run it inside a network namespace whose OUTPUT chain drops them.
//!
//! Datagrams go out with `sendmmsg` in batches (or one per `sendto` call, `--sendto`). A datagram dropped by netfilter fails with
//! EPERM, and `sendmmsg` stops at the first failed message (returning -1 if it is the
//! first), so under a DROP rule every call hands exactly one datagram to the kernel and
//! batching saves nothing: flood counts attempts, never calls.
//!
//! It prints one line on stdout:
//! `flood: flows=F attempts=N dropped=N sent=N other_errors=N seconds=S cpu_s=C drops_per_s=R`
//! (`dropped` = sends that failed with EPERM, `sent` = sends the kernel accepted, `cpu_s` =
//! its user+sys time: well below `seconds`, it was kept off the CPU by something else).

use std::{
    io, mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    ptr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

/// Source sockets in many-flows mode: two per source address (127.0.0.1, 127.0.0.2), each
/// with its own ephemeral port.
const MANY_SOCKETS: usize = 4;
/// Destination ports of many-flows mode: 1024..=65535.
const FIRST_PORT: u16 = 1024;
const PORTS: usize = 65536 - FIRST_PORT as usize;

#[derive(Parser)]
#[command(
    name = "flood",
    about = "Send small UDP datagrams as fast as one thread can"
)]
struct Args {
    /// Destination address.
    #[arg(long, default_value = "127.0.0.1")]
    dst: Ipv4Addr,
    /// Destination port (one flow).
    #[arg(long, default_value_t = 9)]
    port: u16,
    /// Send to this many distinct flows instead of one, cycling through them: 4 source
    /// sockets (127.0.0.1 and 127.0.0.2, two ephemeral ports each) x destination ports
    /// 1024..=65535 (at most 258048 flows).
    #[arg(long, value_name = "N")]
    flows: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Stop after this many datagrams (whichever comes first).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// UDP payload bytes per datagram.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Send one datagram per `sendto` call instead of `sendmmsg` batches (the way most
    /// programs send).
    #[arg(long)]
    sendto: bool,
}

/// One source socket and the destinations it cycles through (none when connected).
struct Sender {
    socket: UdpSocket,
    dests: Vec<libc::sockaddr_in>,
    cursor: usize,
}

impl Sender {
    /// Points the batch's messages at the next destinations.
    fn fill(&mut self, msgs: &mut [libc::mmsghdr]) {
        if self.dests.is_empty() {
            return;
        }
        for m in msgs {
            let d = &mut self.dests[self.cursor];
            m.msg_hdr.msg_name = ptr::from_mut(d).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            self.cursor = (self.cursor + 1) % self.dests.len();
        }
    }
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn senders(args: &Args) -> anyhow::Result<Vec<Sender>> {
    let Some(flows) = args.flows else {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("bind")?;
        socket
            .connect(SocketAddrV4::new(args.dst, args.port))
            .context("connect")?;
        return Ok(vec![Sender {
            socket,
            dests: Vec::new(),
            cursor: 0,
        }]);
    };
    if flows == 0 || flows > MANY_SOCKETS * PORTS {
        bail!("--flows must be 1..={}", MANY_SOCKETS * PORTS);
    }
    (0..MANY_SOCKETS)
        .map(|k| {
            let src = Ipv4Addr::new(127, 0, 0, 1 + (k % 2) as u8);
            let socket = UdpSocket::bind((src, 0)).with_context(|| format!("bind {src}"))?;
            let n = flows / MANY_SOCKETS + usize::from(k < flows % MANY_SOCKETS);
            let dests = (0..n)
                .map(|j| sockaddr(args.dst, FIRST_PORT + j as u16))
                .collect();
            Ok(Sender {
                socket,
                dests,
                cursor: 0,
            })
        })
        .filter(|s| s.as_ref().map_or(true, |s: &Sender| !s.dests.is_empty()))
        .collect()
}

#[derive(Default)]
struct Counts {
    attempts: u64,
    dropped: u64,
    sent: u64,
    other_errors: u64,
    first_error: Option<io::Error>,
}

impl Counts {
    /// A send that failed: dropped by netfilter (EPERM) or something else.
    fn failed(&mut self, e: io::Error) {
        if e.raw_os_error() == Some(libc::EPERM) {
            self.dropped += 1;
        } else {
            self.other_errors += 1;
            self.first_error.get_or_insert(e);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut senders = senders(&args)?;
    let payload = vec![0x5a_u8; args.size];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let iov_ptr = ptr::from_mut(&mut iov);
    let batch = args.batch as usize;
    let mut msgs: Vec<libc::mmsghdr> = (0..batch)
        .map(|_| {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid empty message.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov_ptr;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    let limit = args.count.unwrap_or(u64::MAX);
    let duration = Duration::from_secs_f64(args.seconds.max(0.0));
    let mut c = Counts::default();
    let start = Instant::now();
    let mut next = 0;
    'run: while c.attempts < limit && start.elapsed() < duration {
        let count = senders.len();
        let sender = &mut senders[next];
        next = (next + 1) % count;
        sender.fill(&mut msgs);
        let fd = sender.socket.as_raw_fd();
        if args.sendto {
            for m in msgs.iter().take(batch) {
                if c.attempts >= limit {
                    break 'run;
                }
                // SAFETY: the name (when set) and the payload are live buffers that outlive
                // the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        payload.as_ptr().cast(),
                        payload.len(),
                        0,
                        m.msg_hdr.msg_name.cast(),
                        m.msg_hdr.msg_namelen,
                    )
                };
                c.attempts += 1;
                if n >= 0 {
                    c.sent += 1;
                } else {
                    c.failed(io::Error::last_os_error());
                }
            }
            continue;
        }
        let mut i = 0;
        while i < batch {
            let want = (batch - i).min((limit - c.attempts).try_into().unwrap_or(usize::MAX));
            if want == 0 {
                break 'run;
            }
            // SAFETY: msgs[i..i + want] are initialised messages whose name and iovec point
            // at live buffers (dests, payload, iov) that outlive the call.
            let n =
                unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr().add(i), want as libc::c_uint, 0) };
            if n >= 0 {
                // All sent, or sent up to a failed message whose error the kernel drops.
                c.sent += n as u64;
                c.attempts += n as u64;
                i += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            c.failed(e);
            c.attempts += 1;
            i += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds();
    if let Some(e) = &c.first_error {
        eprintln!(
            "flood: {} send(s) failed other than with EPERM, first: {e}",
            c.other_errors
        );
    }
    println!(
        "flood: flows={} attempts={} dropped={} sent={} other_errors={} seconds={secs:.3} cpu_s={cpu:.3} \
         drops_per_s={:.0}",
        args.flows.unwrap_or(1),
        c.attempts,
        c.dropped,
        c.sent,
        c.other_errors,
        c.dropped as f64 / secs,
    );
    Ok(())
}

/// This process's user+sys CPU time.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain old data, filled by the kernel.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
