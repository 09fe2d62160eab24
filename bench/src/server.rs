//! The server under test, as a child process: the real `concord` binary or
//! the `broadcast-baseline`, started on a free port; and what `/proc` says
//! about it (CPU time, resident memory).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Longest a server may take to print its address line.
const STARTUP_WAIT_MAX: Duration = Duration::from_secs(60);
/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 by
/// the Linux user ABI on every architecture this runs on).
const PROC_CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// The session rate limit given to `concord serve`: high enough that no
/// workload is capped by it (the default, 500 messages/s per session, would
/// cap a closed-loop client at 500 ops/s).
const RATE_UNLIMITED_MESSAGES_PER_SECOND: &str = "100000000";

/// The schema `concord-auth` holds every shape of W1's board to.
const SHAPE_RULES: &str = r##"{"schemas": [{"docs": "**", "pointer": "/shapes/*", "schema": {
    "type": "object", "required": ["x", "y", "w", "h", "color"], "additionalProperties": false,
    "properties": {"x": {"type": "number"}, "y": {"type": "number"},
                   "w": {"type": "number", "minimum": 0}, "h": {"type": "number", "minimum": 0},
                   "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}}}]}"##;
/// The HS256 secret `concord-auth` verifies its sessions' token with.
const BENCH_SECRET: &str = "concord-bench's secret: only for benchmarks, 32+ bytes";

/// Which server a run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The real `concord serve`.
    Concord,
    /// `concord serve` requiring a token (HS256, sent in the first message,
    /// writes scoped to `/shapes`) and a JSON Schema on `/shapes/*`.
    ConcordAuth,
    /// `broadcast-baseline`: rebroadcasts every message, no logic.
    Baseline,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Concord => "concord",
            ServerKind::ConcordAuth => "concord-auth",
            ServerKind::Baseline => "baseline",
        }
    }

    /// A Concord server (documents, commits), with or without auth.
    pub fn is_concord(self) -> bool {
        matches!(self, ServerKind::Concord | ServerKind::ConcordAuth)
    }
}

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    pub concord_bin: PathBuf,
    pub baseline_bin: PathBuf,
    /// Give `concord` a fresh data directory (`--sync full`) instead of
    /// `--memory`.
    pub durable: bool,
    /// Extra arguments for `concord serve`.
    pub extra_args: Vec<String>,
}

/// A running server; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pid: u32,
    ws_url: String,
    /// Kept open so the server never writes into a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    _data_dir: Option<TempDir>,
    /// The token each session sends first (`concord-auth`).
    token: Option<String>,
    /// The secret and rules files of `concord-auth`.
    _auth_dir: Option<TempDir>,
}

impl ServerProcess {
    /// Starts `kind` on `127.0.0.1:0` and waits for its address line.
    /// `sessions_max` is passed to `concord` so a workload's sessions all fit.
    pub async fn start(setup: &ServerSetup, kind: ServerKind, sessions_max: usize) -> Result<Self> {
        let mut token = None;
        let mut auth_dir = None;
        let (mut command, data_dir) = match kind {
            ServerKind::Concord | ServerKind::ConcordAuth => {
                let mut command = Command::new(&setup.concord_bin);
                command.args(["serve", "--listen", "127.0.0.1:0"]);
                command.args(["--rate-messages-per-second", RATE_UNLIMITED_MESSAGES_PER_SECOND]);
                command.args(["--rate-burst-messages-max", RATE_UNLIMITED_MESSAGES_PER_SECOND]);
                command.args(["--sessions-max", &sessions_max.max(1).to_string()]);
                let data_dir = if setup.durable {
                    let dir = tempfile::Builder::new().prefix("concord-bench-").tempdir()?;
                    command.arg("--data").arg(dir.path());
                    Some(dir)
                } else {
                    command.arg("--memory");
                    None
                };
                command.args(&setup.extra_args);
                if kind == ServerKind::ConcordAuth {
                    let dir = tempfile::Builder::new().prefix("concord-bench-auth-").tempdir()?;
                    let secret = dir.path().join("secret");
                    let rules = dir.path().join("rules.json");
                    std::fs::write(&secret, BENCH_SECRET)?;
                    std::fs::write(&rules, SHAPE_RULES)?;
                    token = Some(mint_token(&setup.concord_bin, &secret).await?);
                    command.arg("--jwt-secret-file").arg(&secret).arg("--rules").arg(&rules);
                    auth_dir = Some(dir);
                }
                (command, data_dir)
            }
            ServerKind::Baseline => {
                let mut command = Command::new(&setup.baseline_bin);
                command.args(["--listen", "127.0.0.1:0"]);
                (command, None)
            }
        };
        let program = match kind {
            ServerKind::Concord | ServerKind::ConcordAuth => &setup.concord_bin,
            ServerKind::Baseline => &setup.baseline_bin,
        };
        if !program.exists() {
            bail!(
                "{} not found: build it (`cargo build --release -p concord-server --bin concord`, \
                 `cargo build --release -p concord-bench`) or pass its path",
                program.display()
            );
        }
        let mut child = command
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("{} exited at once", program.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(STARTUP_WAIT_MAX, lines.next_line())
            .await
            .with_context(|| format!("{} printed no address line", program.display()))??
            .ok_or_else(|| anyhow!("{} exited before listening", program.display()))?;
        let address = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .ok_or_else(|| anyhow!("no http:// address in {line:?}"))?
            .trim_end_matches('/');
        let ws_url = format!("ws://{address}/ws");
        Ok(Self {
            child,
            pid,
            ws_url,
            _stdout: lines,
            _data_dir: data_dir,
            token,
            _auth_dir: auth_dir,
        })
    }

    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// The token a session must send first, if the server wants one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn usage(&self) -> Result<ProcessUsage> {
        ProcessUsage::read(self.pid)
    }

    /// Kills the server (SIGKILL: nothing it holds is needed after a run).
    pub async fn stop(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A token for every W1 session: any document, writes under `/shapes` only
/// (so the server checks each commit's scopes), valid for a day.
async fn mint_token(concord: &Path, secret: &Path) -> Result<String> {
    let output = Command::new(concord)
        .args(["token", "--sub", "bench", "--ttl", "1d", "--write", "**=/shapes"])
        .arg("--secret-file")
        .arg(secret)
        .output()
        .await
        .with_context(|| format!("running {} token", concord.display()))?;
    if !output.status.success() {
        bail!("concord token failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size (`VmRSS`), in KiB.
    pub rss_kib: u64,
}

impl ProcessUsage {
    pub fn read(pid: u32) -> Result<Self> {
        Self::read_at(Path::new(&format!("/proc/{pid}")))
    }

    /// This process (the load generator).
    pub fn read_self() -> Result<Self> {
        Self::read_at(Path::new("/proc/self"))
    }

    fn read_at(proc_dir: &Path) -> Result<Self> {
        let stat = std::fs::read_to_string(proc_dir.join("stat"))
            .with_context(|| format!("reading {}/stat", proc_dir.display()))?;
        // Fields after the command name (which may hold spaces and ')'):
        // state is field 3, utime field 14, stime field 15.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |field: usize| -> Result<u64> {
            let raw = fields.get(field - 3).ok_or_else(|| anyhow!("short stat: {stat}"))?;
            Ok(raw.parse()?)
        };
        let cpu_seconds = (ticks(14)? + ticks(15)?) as f64 / PROC_CLOCK_TICKS_PER_SECOND;
        let status = std::fs::read_to_string(proc_dir.join("status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("no VmRSS in {}/status", proc_dir.display()))?
            .parse()?;
        Ok(Self { cpu_seconds, rss_kib })
    }
}

/// The default path of a sibling binary: next to this executable (cargo puts
/// every binary of a profile in one directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    Ok(dir.join(name))
}
