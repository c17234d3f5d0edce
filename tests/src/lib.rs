//! Test tooling shared by the integration suites: a real Azurite (Table and Queue) started once per test
//! process on free loopback ports (and a Queue service of its own for a test that needs
//! one), and the built `handler` run as a child process.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tables::StorageAccount;

pub mod fake_entra;
pub mod fake_graph;
pub mod fake_key_vault;

/// Azurite's table and queue services: the ones every test of one test binary shares
/// ([`Azurite::shared`]), or ones of a test's own.
#[derive(Clone, Debug)]
pub struct Azurite {
    pub table_port: u16,
    pub queue_port: u16,
}

/// Where the pinned Azurite package lives (`tests/azurite`, with its lockfile).
pub fn azurite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("azurite")
}

/// One Azurite service: its entry point and the flags naming its host and port.
struct Service {
    main: &'static str,
    host_flag: &'static str,
    port_flag: &'static str,
    reuse_env: &'static str,
}

const TABLE: Service = Service {
    main: "node_modules/azurite/dist/src/table/main.js",
    host_flag: "--tableHost",
    port_flag: "--tablePort",
    reuse_env: "AZURITE_TABLE_PORT",
};

const QUEUE: Service = Service {
    main: "node_modules/azurite/dist/src/queue/main.js",
    host_flag: "--queueHost",
    port_flag: "--queuePort",
    reuse_env: "AZURITE_QUEUE_PORT",
};

impl Azurite {
    /// The shared instance. Each service is the one on `AZURITE_TABLE_PORT` /
    /// `AZURITE_QUEUE_PORT` when the runner started it, otherwise one started here
    /// (installing the pinned package with `npm ci` if needed); both start at once.
    pub fn shared() -> &'static Azurite {
        static SHARED: OnceLock<Azurite> = OnceLock::new();
        SHARED.get_or_init(|| {
            let table = Azurite::reuse_or_spawn(&TABLE);
            let queue = Azurite::reuse_or_spawn(&QUEUE);
            Azurite {
                table_port: Azurite::ready(&TABLE, table),
                queue_port: Azurite::ready(&QUEUE, queue),
            }
        })
    }

    /// A new Azurite of its own (both services), for a benchmark that compares two builds:
    /// each then meets an Azurite in the same state (one that has served a run before is
    /// slower, its heap larger). It lives as long as this process.
    pub fn fresh() -> Azurite {
        let table = Azurite::spawn(&TABLE);
        let queue = Azurite::spawn(&QUEUE);
        Azurite {
            table_port: Azurite::ready(&TABLE, table),
            queue_port: Azurite::ready(&QUEUE, queue),
        }
    }

    /// The shared Table service with a Queue service of its own (a new Azurite queue
    /// process, living as long as this process): for a test whose handler polls queues, so
    /// that no other test's handler takes its messages, while its tables (named apart by
    /// their prefix) stay on the shared service.
    pub fn with_own_queues() -> Azurite {
        let queue = Azurite::spawn(&QUEUE);
        Azurite {
            table_port: Azurite::shared().table_port,
            queue_port: Azurite::ready(&QUEUE, queue),
        }
    }

    /// The port of a service: reused from the environment, or a child started on a free one.
    fn reuse_or_spawn(service: &Service) -> u16 {
        if let Some(port) = std::env::var(service.reuse_env)
            .ok()
            .and_then(|p| p.parse().ok())
        {
            return port;
        }
        Azurite::spawn(service)
    }

    /// A child serving `service` on a free port.
    fn spawn(service: &Service) -> u16 {
        let dir = azurite_dir();
        let bin = dir.join(service.main);
        if !bin.exists() {
            install_azurite(&dir);
        }
        let port = free_port();
        let workspace = std::env::temp_dir().join(format!("azurite-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&workspace).expect("an Azurite workspace folder");
        let mut command = Command::new("node");
        command
            .arg(&bin)
            .args([
                service.host_flag,
                "127.0.0.1",
                service.port_flag,
                &port.to_string(),
            ])
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
                "--skipApiVersionCheck",
            ])
            .current_dir(&workspace)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        spawn_owned(command);
        port
    }

    fn ready(service: &Service, port: u16) -> u16 {
        wait_for_port(port, Duration::from_secs(60)).unwrap_or_else(|e| {
            panic!(
                "Azurite ({}, {}) is not accepting connections: {e}",
                service.main, service.reuse_env
            )
        });
        port
    }

    /// CPU seconds this Azurite's table service (found by its port in /proc) has used so
    /// far, for benchmarks: a share of it per request is the store's cost of that request,
    /// which the machine's changing speed moves less than throughput.
    pub fn table_cpu_seconds(&self) -> Option<f64> {
        let port = self.table_port.to_string();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let serves_table = args.iter().any(|a| a.ends_with(b"table/main.js"));
            let on_port = args
                .windows(2)
                .any(|w| w[0] == TABLE.port_flag.as_bytes() && w[1] == port.as_bytes());
            if serves_table && on_port {
                return cpu_seconds(entry.file_name().to_str()?.parse().ok()?);
            }
        }
        None
    }

    /// The storage account as the handler's `AzureWebJobsStorage` would name it.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            DEV_KEY, self.table_port, self.queue_port
        )
    }

    /// The account, for talking to Azurite directly from a test.
    pub fn account(&self) -> StorageAccount {
        StorageAccount::from_connection_string(&self.connection_string())
            .expect("a valid development connection string")
    }

    /// A client on this Azurite.
    pub fn client(&self) -> tables::TableServiceClient {
        tables::TableServiceClient::new(self.account()).expect("a table client")
    }

    /// The queue service of this Azurite.
    pub fn queues(&self) -> queues::Queues {
        queues::Queues::new(&self.account()).expect("a queue client")
    }
}

/// `npm ci` of the pinned package, once per process even when two services need it.
fn install_azurite(dir: &Path) {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _once = INSTALL.lock().expect("install lock");
    if dir.join(TABLE.main).exists() && dir.join(QUEUE.main).exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .status()
        .expect("npm is needed to install Azurite");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// The `Housekeeping` timer invocation exactly as ../shared/reference/functions-host.md shows
/// the host sending it.
pub const HOST_TIMER_BODY: &str = r#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},
    "ScheduleStatus":{"Last":"2026-11-24T10:00:00+00:00","Next":"2026-11-24T10:15:00+00:00","LastUpdated":"2026-11-24T10:00:00+00:00"},
    "IsPastDue":false}},
 "Metadata":{"sys":{"MethodName":"Housekeeping","UtcNow":"2026-11-24T10:15:00.012Z","RandGuid":"0f8fad5b-d9cb-469f-a165-70867728950e"}}}"#;

/// Azurite's public development key (documented by Microsoft; not a secret).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The `scim2` command of scim2-cli, installed from `tests/scim/requirements.txt` into
/// `tests/scim/.venv` on first use (Python 3 with venv and pip is needed).
pub fn scim2_cli() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| python_venv("scim").join("scim2"))
        .clone()
}

/// The `bin` folder of the venv with Schemathesis and openapi-spec-validator, installed
/// from `tests/openapi/requirements.txt` into `tests/openapi/.venv` on first use.
pub fn openapi_tools() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(|| python_venv("openapi")).clone()
}

/// `tests/<dir>/.venv/bin`, with `tests/<dir>/requirements.txt` installed (again when the
/// file changed since).
fn python_venv(dir: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let venv = dir.join(".venv");
    let bin = venv.join("bin");
    let marker = venv.join("requirements.installed");
    let requirements = dir.join("requirements.txt");
    let wanted = std::fs::read(&requirements)
        .unwrap_or_else(|_| panic!("{} is missing", requirements.display()));
    if bin.join("python").exists()
        && std::fs::read(&marker).ok().as_deref() == Some(wanted.as_slice())
    {
        return bin;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is needed for the Python test tools");
    assert!(
        status.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let status = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .expect("pip runs");
    assert!(
        status.success(),
        "pip install -r {} failed",
        requirements.display()
    );
    std::fs::write(&marker, &wanted).expect("write the install marker");
    bin
}

/// The release `handler` the API tests attack: `RELEASE_HANDLER` when set, else
/// `target/release/handler` built now (`cargo build --release -p handler`).
pub fn release_handler_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("RELEASE_HANDLER") {
                let path = PathBuf::from(path);
                assert!(
                    path.exists(),
                    "RELEASE_HANDLER {} does not exist",
                    path.display()
                );
                return path;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--release", "--quiet", "-p", "handler"])
                .current_dir(&root)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build --release -p handler failed");
            root.join("target/release/handler")
        })
        .clone()
}

/// The Python of `tests/smtp/.venv`, with aiosmtpd installed from
/// `tests/smtp/requirements.txt` on first use; `tests/smtp/server.py` is the server.
pub fn smtp_python() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp");
            let venv = dir.join(".venv");
            let bin = venv.join("bin/python");
            let marker = venv.join("requirements.installed");
            let wanted =
                std::fs::read(dir.join("requirements.txt")).expect("tests/smtp/requirements.txt");
            if bin.exists() && std::fs::read(&marker).ok().as_deref() == Some(wanted.as_slice()) {
                return bin;
            }
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            let status = Command::new(&python)
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .expect("python3 is needed for the SMTP test server");
            assert!(
                status.success(),
                "python3 -m venv {} failed",
                venv.display()
            );
            let status = Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(dir.join("requirements.txt"))
                .status()
                .expect("pip runs");
            assert!(
                status.success(),
                "pip install -r tests/smtp/requirements.txt failed"
            );
            std::fs::write(&marker, &wanted).expect("write the install marker");
            bin
        })
        .clone()
}

/// The path of `tests/smtp/server.py`.
pub fn smtp_server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/server.py")
}

/// The release `handler` for benchmarks: `HANDLER_BIN`, else `RELEASE_HANDLER` (the
/// packaged binary tests/run builds), else `target/release/handler`, which must have been
/// built (`cargo build --release -p handler`).
pub fn release_handler() -> PathBuf {
    let binary = std::env::var_os("HANDLER_BIN")
        .or_else(|| std::env::var_os("RELEASE_HANDLER"))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/handler"));
    assert!(
        binary.exists(),
        "{} not found: cargo build --release -p handler",
        binary.display()
    );
    binary
}

/// A numeric knob of a benchmark, from the environment.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A table name no other test uses.
pub fn unique_table(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on 127.0.0.1:port.
pub fn wait_for_port(port: u16, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while started.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!(
        "nothing listens on 127.0.0.1:{port} after {limit:?}"
    ))
}

/// Spawns a child that dies with this test process: it is started from a thread that
/// lives as long as the process, with the parent-death signal set.
fn spawn_owned(mut command: Command) {
    use std::os::unix::process::CommandExt as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl is async-signal-safe and only touches the child's own state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn();
        let ok = child.is_ok();
        tx.send(child.map(|_| ()).map_err(|e| e.to_string())).ok();
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv()
        .expect("the spawning thread answers")
        .expect("the child process starts");
}

/// CPU seconds (user and system) process `pid` has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command's closing parenthesis: utime and stime are 12th and 13th
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The built `handler` binary running as a child process, killed when dropped.
pub struct HandlerProcess {
    child: Child,
    pub port: u16,
    output: Arc<Mutex<String>>,
    pub started_at: Instant,
}

impl HandlerProcess {
    /// Starts `binary serve` with exactly the given environment (plus PATH), on a free port.
    pub fn start(binary: &str, args: &[&str], env: &[(&str, String)]) -> HandlerProcess {
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let started_at = Instant::now();
        let mut child = command.spawn().expect("the handler binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut out = output.lock().expect("output lock");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let mut process = HandlerProcess {
            child,
            port,
            output,
            started_at,
        };
        if let Err(e) = wait_for_port(port, Duration::from_secs(10)) {
            let status = process.child.try_wait().ok().flatten();
            panic!(
                "handler did not listen ({e}); exit: {status:?}; output:\n{}",
                process.output()
            );
        }
        process
    }

    /// The process id (to read its memory use from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the process has used so far; None where /proc has no answer.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// Peak resident memory so far (`VmHWM`), in KiB; None where /proc has no answer.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The base URL, `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the process printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits for the process to exit by itself, returning its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                // let the reader threads drain
                std::thread::sleep(Duration::from_millis(50));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Runs the handler with arguments and environment, expecting it to exit; returns (code, output).
pub fn run_to_exit(binary: &str, args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("the handler binary runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// One Table Storage request as a fault rule sees it: method, path (with the table name,
/// or `/$batch`) and body (a batch names its table in the body).
pub struct TableRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: &'a str,
}

/// A Table endpoint on loopback in front of the shared Azurite that answers 503
/// `ServerBusy` to every request `fail` says yes to, and passes the rest on. Returns its
/// port: point a connection string's `TableEndpoint` at it.
pub async fn faulty_table_endpoint(
    fail: impl Fn(&TableRequest<'_>) -> bool + Send + Sync + 'static,
) -> u16 {
    use warp::Filter;
    let azurite = Azurite::shared().account().table_endpoint.clone();
    let port = free_port();
    let http = reqwest::Client::new();
    let fail = Arc::new(fail);
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: warp::http::HeaderMap,
                  body: bytes::Bytes| {
                let (http, azurite, fail) = (http.clone(), azurite.clone(), fail.clone());
                async move {
                    let text = String::from_utf8_lossy(&body);
                    if fail(&TableRequest {
                        method: method.as_str(),
                        path: path.as_str(),
                        body: &text,
                    }) {
                        return warp::http::Response::builder()
                            .status(503)
                            .header("content-type", "application/json")
                            .body(br#"{"odata.error":{"code":"ServerBusy","message":{"value":"injected"}}}"#.to_vec())
                            .unwrap();
                    }
                    let origin = format!("{}://{}", azurite.scheme(), azurite.authority());
                    let url = if query.is_empty() {
                        format!("{origin}{}", path.as_str())
                    } else {
                        format!("{origin}{}?{query}", path.as_str())
                    };
                    let mut request = http.request(method, url).body(body);
                    for (name, value) in &headers {
                        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
                            request = request.header(name, value);
                        }
                    }
                    let answer = request.send().await.unwrap();
                    let mut response = warp::http::Response::builder().status(answer.status());
                    for (name, value) in answer.headers() {
                        if !matches!(
                            name.as_str(),
                            "content-length" | "transfer-encoding" | "connection"
                        ) {
                            response = response.header(name, value);
                        }
                    }
                    response
                        .body(answer.bytes().await.unwrap().to_vec())
                        .unwrap()
                }
            },
        );
    tokio::spawn(warp::serve(route).run(([127, 0, 0, 1], port)));
    wait_for_port(port, Duration::from_secs(5)).unwrap();
    port
}

/// The shared Azurite's connection string with its Table endpoint on `port` instead.
pub fn connection_string_via(port: u16) -> String {
    let azurite = Azurite::shared();
    let table_port = azurite.account().table_endpoint.port().unwrap();
    azurite.connection_string().replace(
        &format!("127.0.0.1:{table_port}"),
        &format!("127.0.0.1:{port}"),
    )
}
