//! Redis commands from the run itself (the history at the end, the
//! faults, the cluster's state): RESP over a plain TCP connection per
//! command, following `MOVED` on a cluster.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::Duration,
};

#[derive(Debug, Clone)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub(crate) fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) | Reply::Bulk(Some(s)) => s.clone(),
            Reply::Int(n) => n.to_string(),
            _ => String::new(),
        }
    }

    pub(crate) fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            _ => &[],
        }
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || rest.parse::<i64>().map_err(|_| std::io::Error::other(format!("bad RESP line {line:?}")));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match number()? {
            n if n < 0 => Reply::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        "*" => match number()? {
            n if n < 0 => Reply::Array(None),
            n => Reply::Array(Some((0..n).map(|_| read_reply(reader)).collect::<Result<_, _>>()?)),
        },
        _ => return Err(std::io::Error::other(format!("bad RESP line {line:?}"))),
    })
}

/// One command to the Redis at `port`.
pub(crate) fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    read_reply(&mut BufReader::new(stream))
}

/// A command for a key's node: asked of `port`, then of whichever node a
/// `MOVED` names.
pub(crate) fn keyed(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut port = port;
    for _ in 0..5 {
        match command(port, args)? {
            Reply::Error(e) if e.starts_with("MOVED ") => {
                port = e.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or_else(|| std::io::Error::other(e))?;
            }
            reply => return Ok(reply),
        }
    }
    Err(std::io::Error::other("MOVED too many times"))
}

/// A field of `INFO <section>`.
pub(crate) fn info(port: u16, section: &str, field: &str) -> Option<String> {
    let text = command(port, &["INFO", section]).ok()?.text();
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
}
