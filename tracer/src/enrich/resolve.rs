//! `--resolve`: reverse DNS names for destinations, never on the event path.
//!
//! A resolver can take seconds (or hang) on a broken host, which is exactly where droptrace
//! runs. Lookups go to one background thread; the event path only reads a cache, so a
//! destination shows its name from the first line printed after its lookup finished.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex, mpsc},
    thread,
};

/// Addresses remembered at most (names and failures alike).
const MAX_CACHED: usize = 65_536;

pub struct Resolver {
    names: Arc<Mutex<HashMap<IpAddr, Option<String>>>>,
    asked: HashSet<IpAddr>,
    queue: mpsc::Sender<IpAddr>,
}

impl Resolver {
    pub fn start() -> Self {
        let names: Arc<Mutex<HashMap<IpAddr, Option<String>>>> = Arc::default();
        let (queue, requests) = mpsc::channel::<IpAddr>();
        let shared = Arc::clone(&names);
        thread::spawn(move || {
            for addr in requests {
                let name = dns_lookup::lookup_addr(&addr)
                    .ok()
                    .filter(|n| *n != addr.to_string());
                if let Ok(mut map) = shared.lock() {
                    if map.len() >= MAX_CACHED {
                        map.clear();
                    }
                    map.insert(addr, name);
                }
            }
        });
        Resolver {
            names,
            asked: HashSet::new(),
            queue,
        }
    }

    /// The name of `addr` if already known; otherwise asks for it and returns `None`.
    pub fn name(&mut self, addr: IpAddr) -> Option<String> {
        if let Some(known) = self.names.lock().ok().and_then(|m| m.get(&addr).cloned()) {
            return known;
        }
        if self.asked.len() >= MAX_CACHED {
            self.asked.clear();
        }
        if self.asked.insert(addr) {
            let _ = self.queue.send(addr);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn never_blocks_and_answers_later() {
        let mut r = Resolver::start();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        // Not waiting is structural: the first call queues the lookup and returns None.
        assert_eq!(r.name(lo), None, "the first call only queues the lookup");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut name = None;
        while name.is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
            name = r.name(lo);
        }
        assert_eq!(
            name.as_deref(),
            Some("localhost"),
            "127.0.0.1 is in /etc/hosts"
        );
    }
}
