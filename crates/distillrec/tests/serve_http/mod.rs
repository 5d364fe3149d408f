//! A `distillrec serve` process for the tests and a minimal HTTP/1.1
//! client over a raw `TcpStream` (loopback only, one request per
//! connection).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use crate::common::bin;

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request to `addr` and reads the whole answer.
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    // a server that answers before reading the whole body (413) may reset
    // the connection after its answer: keep what arrived
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in: {text}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in: {head}"));
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

/// A running `distillrec serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Server {
    /// Starts `serve --addr 127.0.0.1:0 ARGS` and reads the bound address
    /// from its first line of stdout.
    pub fn start(args: &[&str]) -> Server {
        let mut child = bin()
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve did not start: stdout {line:?}, stderr {err}");
        };
        Server {
            addr: addr.to_string(),
            child,
        }
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        request(&self.addr, "POST", path, body).expect("request")
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        request(&self.addr, "GET", path, "").expect("request")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to end (at most 30 s) and returns its status
    /// and stderr.
    pub fn wait(&mut self) -> (ExitStatus, String) {
        for _ in 0..300 {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (st, err);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("server did not stop within 30 s");
    }

    /// The value (last field) of the first `/metrics` line that starts
    /// with `prefix` (a name and maybe the start of its labels).
    pub fn metric(&self, prefix: &str) -> f64 {
        let m = self.get("/metrics");
        assert_eq!(m.status, 200);
        m.body
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no metric {prefix} in:\n{}", m.body))
    }

    /// The served model's checkpoint SHA-256 (from `/readyz`).
    pub fn model_sha(&self) -> String {
        let r = self.get("/readyz");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["model"]["checkpoint_sha256"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
