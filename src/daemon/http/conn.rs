//! One HTTP/1.x exchange on one connection, bounded in every way a client controls: the
//! request head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers (parsed by
//! `httparse`), a body is never read, every read and write gives up after [`IO_TIMEOUT`],
//! and the connection closes after the response (no keep-alive to hold a worker).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The largest request line plus headers.
pub const MAX_HEAD: usize = 8192;
pub const MAX_HEADERS: usize = 32;
/// A client slower than this on any read or write is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request asks.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub method: String,
    pub path: String,
}

/// A response.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((name, value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Read and parse the request head; `Err(status)` says why not.
pub fn read_head(stream: &mut TcpStream) -> Result<Head, u16> {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(431);
        }
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(400),
            Ok(n) => n,
            Err(_) => return Err(408),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(Head {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("").to_string(),
                })
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}

/// Write `reply` (without its body for HEAD) and close.
pub fn write(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(&reply.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// What `read_head` makes of `bytes` sent by a client (then closing its side).
    fn head_of(bytes: Vec<u8>) -> Result<Head, u16> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let _ = c.write_all(&bytes);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        });
        let (mut s, _) = l.accept().unwrap();
        let head = read_head(&mut s);
        drop(s);
        client.join().unwrap();
        head
    }

    #[test]
    fn heads_are_parsed_and_bounded() {
        let ok = head_of(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).unwrap();
        assert_eq!(
            (ok.method.as_str(), ok.path.as_str()),
            ("GET", "/metrics?x=1")
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 3 * MAX_HEAD));
        assert_eq!(head_of(long).unwrap_err(), 431, "an endless header");
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head_of(many.into_bytes()).unwrap_err(), 431);
        assert_eq!(head_of(b"GET / HT".to_vec()).unwrap_err(), 400, "cut short");
        assert_eq!(
            head_of(b"\x00\x01 nonsense\r\n\r\n".to_vec()).unwrap_err(),
            400
        );
    }
}
