//! Kernel address -> function name, from `/proc/kallsyms`.
//!
//! The drop location and the kernel stack arrive as raw addresses; the hook (OUTPUT,
//! INPUT, ...) and the engine (nf_tables or legacy xtables) are read from the function
//! names in the stack (see [`crate::kernel::stack`]). Only text symbols are kept.

use std::{fs, io, thread::JoinHandle};

#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, name), sorted by address.
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string("/proc/kallsyms")?))
    }

    /// Parses the `ADDR TYPE NAME [MODULE]` lines of /proc/kallsyms. Addresses all zero
    /// (kptr_restrict without privileges) yield an empty table.
    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_ascii_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                let is_text = matches!(kind, "t" | "T" | "w" | "W");
                (is_text && addr != 0).then(|| (addr, name.to_string()))
            })
            .collect();
        symbols.sort_unstable_by_key(|(a, _)| *a);
        Kallsyms { symbols }
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The function containing `addr` (the last symbol at or below it).
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        let i = self.symbols.partition_point(|(a, _)| *a <= addr);
        let (_, name) = self.symbols.get(i.checked_sub(1)?)?;
        Some(name)
    }

    /// `[start, end)` of a function: from its address to the next symbol's.
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.symbols.iter().position(|(_, n)| n == name)?;
        let start = self.symbols[i].0;
        let end = self.symbols[i + 1..]
            .iter()
            .map(|(a, _)| *a)
            .find(|a| *a > start)?;
        Some((start, end))
    }

    /// Address of a function by name.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|(_, n)| n == name)
            .map(|(a, _)| *a)
    }
}

/// /proc/kallsyms, read on a thread of its own and joined when first needed: the kernel
/// formats some 200,000 lines for it (80 ms of CPU on a small VM), which start-up waited
/// for though only drop records and kernels without drop reasons need it.
pub struct Background {
    reading: Option<JoinHandle<io::Result<Kallsyms>>>,
    read: Kallsyms,
}

impl Background {
    pub fn start() -> Self {
        Background {
            reading: Some(std::thread::spawn(Kallsyms::load)),
            read: Kallsyms::default(),
        }
    }

    /// The symbols, once read. A failed read leaves none, and says so once: the hooks of
    /// drops will be unknown.
    pub fn get(&mut self) -> &Kallsyms {
        if let Some(reading) = self.reading.take() {
            match reading.join() {
                Ok(Ok(read)) => {
                    if read.is_empty() {
                        log::warn!(
                            "/proc/kallsyms shows no addresses (kptr_restrict): hooks will be unknown"
                        );
                    }
                    self.read = read;
                }
                Ok(Err(e)) => log::warn!("cannot read /proc/kallsyms ({e}): hooks will be unknown"),
                Err(_) => log::warn!("reading /proc/kallsyms panicked: hooks will be unknown"),
            }
        }
        &self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 T nf_hook_slow
ffffffff81a00400 t __ip_local_out
ffffffff81b00000 D some_data
ffffffffc0001000 t nft_do_chain\t[nf_tables]
";

    #[test]
    fn resolves_addresses_to_the_enclosing_function() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.resolve(0xffffffff81a00010), Some("nf_hook_slow"));
        assert_eq!(k.resolve(0xffffffff81a00400), Some("__ip_local_out"));
        assert_eq!(k.resolve(0xffffffffc0001234), Some("nft_do_chain"));
        assert_eq!(k.resolve(0x10), None);
        // Data symbols are not functions.
        assert_eq!(k.resolve(0xffffffff81b00010), Some("__ip_local_out"));
        assert_eq!(k.address("nf_hook_slow"), Some(0xffffffff81a00000));
        assert_eq!(
            k.range("nf_hook_slow"),
            Some((0xffffffff81a00000, 0xffffffff81a00400))
        );
        assert_eq!(k.range("no_such_fn"), None);
    }

    #[test]
    fn restricted_kallsyms_gives_an_empty_table() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 T nf_hook_slow\n");
        assert!(k.is_empty());
        assert_eq!(k.resolve(0xffffffff81a00010), None);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let k = Kallsyms::parse("zzz\n\nffffffff81000000\nffffffff81000000 T\n");
        assert!(k.is_empty());
    }
}
