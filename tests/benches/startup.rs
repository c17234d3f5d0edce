//! Start-up of the release `handler`: time to accept connections and to the first 200 from
//! `/api/health` (Azurite running), stripped binary size, and idle RSS.
//!
//! cargo build --release -p handler && cargo bench -p system-tests --bench startup

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::{Azurite, free_port};

const RUNS: usize = 30;

fn spawn_handler(binary: &PathBuf, port: u16, storage: &str) -> Child {
    Command::new(binary)
        .arg("host")
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("AzureWebJobsStorage", storage)
        .env("STORAGE_TABLE_PREFIX", "bench")
        .env("ENTRA_CLIENT_ID", "6e74172b-be56-4843-9ff4-e66a39bb12e3")
        .env(
            "ENTRA_ADMIN_TENANT_ID",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("handler starts")
}

fn health_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<28} median {:>7.2} ms   p90 {:>7.2} ms   min {:>7.2} ms   max {:>7.2} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let binary = system_tests::release_handler();
    assert!(
        binary.exists(),
        "{} not found: run cargo build --release -p handler",
        binary.display()
    );
    let storage = Azurite::shared().connection_string();
    let mut to_port = Vec::new();
    let mut to_health = Vec::new();
    for _ in 0..RUNS {
        let port = free_port();
        let started = Instant::now();
        let mut child = spawn_handler(&binary, port, &storage);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no port after 10 s"
            );
        }
        to_port.push(started.elapsed());
        while health_status(port) != Some(200) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no 200 after 10 s"
            );
        }
        to_health.push(started.elapsed());
        child.kill().ok();
        child.wait().ok();
    }
    println!("handler start-up, {RUNS} runs ({})", binary.display());
    report("process start -> port open", to_port);
    report("process start -> health 200", to_health);

    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    println!(
        "binary size                  {:.2} MiB",
        size as f64 / (1024.0 * 1024.0)
    );

    let port = free_port();
    let mut child = spawn_handler(&binary, port, &storage);
    system_tests::wait_for_port(port, Duration::from_secs(10)).unwrap();
    for _ in 0..10 {
        health_status(port);
    }
    std::thread::sleep(Duration::from_secs(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    for field in ["VmRSS", "VmHWM"] {
        if let Some(line) = status.lines().find(|l| l.starts_with(field)) {
            println!("idle after 10 health calls  {line}");
        }
    }
    child.kill().ok();
    child.wait().ok();
}
