//! Helpers shared by the tutorial-example tests and the `switchboard connect` tests: find the
//! example binaries, start a program that announces its port on stdout, run a command with a
//! bounded wait, and stop everything when a test ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on. Only there so a broken build fails instead of
/// hanging; nothing asserts on durations.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The `switchboard` binary under test.
pub fn switchboard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
}

/// `target/<profile>/`, derived from this test binary's location (`target/<profile>/deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A command running a compiled example.
///
/// The examples are (re)built once per test process with `cargo build --examples` into the
/// target directory this test binary lives in. Relying on cargo having built them is not
/// enough: `cargo test --all-targets` compiles examples only as test harnesses, so the plain
/// binaries may be missing or stale. When everything is up to date the build is a no-op.
pub fn example(name: &str) -> Command {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| build_examples(&dir));
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "example binary {} not found", path.display());
    Command::new(path)
}

fn build_examples(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args(["build", "--examples", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("run cargo build --examples");
    assert!(
        out.status.success(),
        "cargo build --examples failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed when the test ends (also on panic).
pub struct Running {
    child: Child,
    /// The port from the program's first stdout line.
    pub port: u16,
}

impl Running {
    /// Process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `cmd` and wait for its first stdout line, which must end with `:PORT`
/// (`listening on 127.0.0.1:PORT`, `Switchboard listening on http://127.0.0.1:PORT`).
pub fn start(mut cmd: Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child can never block on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(LIMIT) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("server did not announce its port");
        }
    };
    let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
    match port {
        Some(port) => Running { child, port },
        None => {
            let _ = child.kill();
            panic!("no port in the first stdout line {line:?}");
        }
    }
}

/// Start `switchboard serve` on an ephemeral port with extra flags.
pub fn serve(extra: &[&str]) -> Running {
    let mut cmd = switchboard();
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    start(cmd)
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Read a pipe to the end on a thread.
pub fn collect(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// Wait for `child` to exit (killing it after [`LIMIT`]) and gather its output.
pub fn finish(mut child: Child) -> Output {
    // A pipe the caller already took (to read it while the process runs) counts as empty.
    let out = child.stdout.take().map(collect);
    let err = child.stderr.take().map(collect);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out
            .and_then(|r| r.recv_timeout(LIMIT).ok())
            .unwrap_or_default(),
        stderr: err
            .and_then(|r| r.recv_timeout(LIMIT).ok())
            .unwrap_or_default(),
    }
}

/// Run `cmd` with stdin closed and wait for it.
pub fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    finish(child)
}
