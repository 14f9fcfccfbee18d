//! Parse errors. Input comes from other programs' output on a host we do not
//! control, so every malformed line becomes an error value that names the
//! line, never a panic.

/// Why a ruleset text could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A line-oriented input (iptables-save, ipset save, nft text) is
    /// malformed at `line` (1-based).
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    /// `nft -j` output is not JSON at all.
    #[error("nftables JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `nft -j` output is JSON but not the expected schema; `item` is the
    /// index in the top-level `nftables` array, when known.
    #[error("nftables JSON item {item}: {message}")]
    NftSchema { item: usize, message: String },
}

impl ParseError {
    pub(crate) fn line(line: usize, message: impl Into<String>) -> ParseError {
        ParseError::Line {
            line,
            message: message.into(),
        }
    }
}

pub type Result<T, E = ParseError> = std::result::Result<T, E>;
