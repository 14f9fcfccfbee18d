//! One plain HTTP/1.1 GET, for the tasks that check `droptrace serve` (no client library
//! for a request or two).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

/// The whole response (status line, headers, body) of `GET path` from `addr`.
pub fn get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    Ok(response)
}
