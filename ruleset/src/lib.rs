//! Names the netfilter rule that decided a packet's fate.
//!
//! droptrace's kernel side reports each packet netfilter dropped, with the
//! hook and the engine (nf_tables or iptables-legacy). That alone does not
//! tell an on-call SRE *which rule* to look at. This crate replays the
//! packet against a snapshot of the ruleset the way the kernel would and
//! names the rule (or chain policy) that decided, together with the chains
//! it passed through and every rule it could not evaluate on the way.
//!
//! It is pure logic: the caller runs the tools and hands over their output.
//!
//! ```no_run
//! # fn demo(save: &str, json: &str, listing: &str, ipsets: &str, packet: &ruleset::Packet)
//! # -> Result<(), ruleset::ParseError> {
//! use ruleset::{Backend, Engine, Family, Hook, Ruleset};
//!
//! let mut tables = ruleset::iptables_save::parse(save, Backend::IptablesNft, Family::Ipv4)?;
//! let mut native = ruleset::nft_json::parse(json)?;
//! ruleset::nft_json::retain_native(&mut native, &tables); // no table twice
//! ruleset::nft_text::apply(&mut native, &ruleset::nft_text::handles(listing));
//! tables.extend(native);
//! let ruleset = Ruleset {
//!     tables,
//!     ipsets: ruleset::ipset::parse_save(ipsets)?,
//!     local_routes: None, // ruleset::addrtype::LocalTable, for -m addrtype and fib
//!     recent: None,       // ruleset::recent::RecentLists, for -m recent
//! };
//!
//! let evaluation = ruleset::eval::evaluate(
//!     &ruleset, Engine::NfTables.backends(), Family::Ipv4, Hook::Output, packet);
//! println!("{} by {}", evaluation.verdict, evaluation.by);
//! # Ok(())
//! # }
//! ```
//!
//! Modules, lower layers first (a module only uses those above it in this list):
//! - `packet` (the packet: family, hook, fields, what is unknown) and [`names`];
//! - [`ipset`] (`ipset save`, for `-m set`) and [`addrtype`] (the local routing table, for
//!   `-m addrtype` and nft `fib ... type`): what packets are tested against;
//! - `model`: tables, chains, rules, matches, the [`Ruleset`];
//! - the parsers that build it: [`iptables_save`] (`iptables-save -c` / `ip6tables-save -c`),
//!   [`nft_json`] (`nft -j list ruleset`), [`nft_text`] (`nft -a list ruleset`, for the
//!   display text);
//! - [`nat`] (which addresses the rules can translate, for `ct status dnat`);
//! - [`recent`] (xt_recent's lists, for `-m recent`);
//! - `matching` (one rule against one packet), [`eval`] (the walk), [`counters`] (which
//!   rules' counters grew).

pub mod addrtype;
mod error;
mod matching;
mod model;
pub mod names;
pub mod nat;
mod packet;
pub mod recent;
mod shell;

pub mod counters;
pub mod eval;
pub mod ipset;
pub mod iptables_save;
pub mod nft_json;
pub mod nft_text;

pub use error::{ParseError, Result};
pub use model::*;
pub use packet::*;
