//! `distillrec bench serve`: a closed-loop load generator. Each of
//! `concurrency` workers keeps one connection and sends its next request as
//! soon as the last answer arrived, until the duration or the request cap
//! is reached. Loopback targets only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What to send, how hard and for how long.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// `http://HOST:PORT/PATH` on a loopback address.
    pub url: String,
    /// The worker counts to run, one after another.
    pub concurrency: Vec<usize>,
    /// How long each level runs.
    pub duration: Duration,
    /// Most requests per level (a bound besides the duration).
    pub max_requests: u64,
    /// The JSON body of every request.
    pub body: String,
}

/// One level's outcome.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Workers.
    pub concurrency: usize,
    /// Answers with status 200.
    pub ok: u64,
    /// Other statuses and broken connections.
    pub errors: u64,
    /// Wall time of the level.
    pub seconds: f64,
    /// Latency quantiles of the answered requests, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

impl LoadResult {
    /// Answers per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// The target of `url`, refused unless it is `http://` on loopback.
pub fn target(url: &str) -> Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url {url}: give an http:// URL (no TLS)");
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/recommend".to_string()),
    };
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("--url {url}: '{host}' is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--url {url}: '{host}' resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        bail!("--url {url}: the load generator only targets loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok((addr, path))
}

/// Runs every concurrency level of `opts` in turn.
pub fn run(opts: &LoadOptions) -> Result<Vec<LoadResult>> {
    let (addr, path) = target(&opts.url)?;
    if opts.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        bail!("--concurrency: each level must be in 1..=1024");
    }
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        opts.body.len(),
        opts.body
    );
    opts.concurrency
        .iter()
        .map(|&c| level(addr, request.as_bytes(), c, opts))
        .collect()
}

/// One level: `workers` threads until the deadline or the request cap.
fn level(
    addr: SocketAddr,
    request: &[u8],
    workers: usize,
    opts: &LoadOptions,
) -> Result<LoadResult> {
    let sent = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + opts.duration;
    let per_worker: Vec<(Vec<u32>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| worker(addr, request, deadline, &sent, opts.max_requests)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let errors = per_worker.iter().map(|(_, e)| e).sum();
    let mut lat: Vec<u32> = per_worker.into_iter().flat_map(|(l, _)| l).collect();
    lat.sort_unstable();
    let q = |p: f64| match lat.len() {
        0 => f64::NAN,
        n => lat[((n as f64 * p) as usize).min(n - 1)] as f64 / 1e3,
    };
    Ok(LoadResult {
        concurrency: workers,
        ok: lat.len() as u64,
        errors,
        seconds,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
    })
}

/// One closed-loop worker: latencies (µs) of its good answers and its
/// error count.
fn worker(
    addr: SocketAddr,
    request: &[u8],
    deadline: Instant,
    sent: &AtomicU64,
    cap: u64,
) -> (Vec<u32>, u64) {
    let (mut lat, mut errors) = (Vec::new(), 0);
    let mut conn: Option<BufReader<TcpStream>> = None;
    while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < cap {
        let t = Instant::now();
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(addr) {
                Ok(c) => c,
                Err(_) => {
                    errors += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match exchange(c, request) {
            Ok((c, 200)) => {
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                conn = Some(c);
            }
            Ok((c, _)) => {
                errors += 1;
                conn = Some(c);
            }
            Err(_) => errors += 1,
        }
    }
    (lat, errors)
}

fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(BufReader::new(s))
}

/// Sends one request on a kept-alive connection and reads its answer
/// (status line, headers, `Content-Length` body).
fn exchange(
    mut c: BufReader<TcpStream>,
    request: &[u8],
) -> std::io::Result<(BufReader<TcpStream>, u16)> {
    c.get_mut().write_all(request)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    c.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| bad("bad Content-Length"))?;
            }
        }
    }
    if length > 16 << 20 {
        return Err(bad("answer too large"));
    }
    let mut body = vec![0; length];
    c.read_exact(&mut body)?;
    Ok((c, status))
}
