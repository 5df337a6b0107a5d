//! A replicated PostgreSQL on this machine, as an operator builds it from Debian's packages: a
//! pg_auto_failover monitor and two nodes (a primary and its synchronous standby), each its own
//! PostgreSQL instance on a loopback port, in a temporary directory that goes with the cluster.
//! The failover tests kill and restart its parts; `roost-bench nodes` measures what synchronous
//! replication costs on it.
//!
//! The monitor is tuned to decide in a few seconds (checks every second, a node unhealthy after
//! two, a failed primary given five to step down): the defaults take about 40 seconds, which is
//! right for a network but not for a test.
//! PostgreSQL refuses to run as root: when the caller runs as root, every process runs as the
//! `postgres` user (which Debian's server package creates).
//!
//! Every method blocks (it runs programs and the synchronous PostgreSQL client): call them off
//! the async workers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Where Debian installs PostgreSQL 15's programs (pg_autoctl looks for `pg_ctl` on the PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_AUTOCTL: &str = "/usr/bin/pg_autoctl";
/// How long the cluster may take to form, or to fail over.
const SETTLE: Duration = Duration::from_secs(180);
/// The database the nodes serve (`--dbname`), the one [`ScratchCluster::url`] names.
const DATABASE: &str = "roost";

/// One PostgreSQL instance under pg_autoctl.
struct Instance {
    name: &'static str,
    port: u16,
    pgdata: PathBuf,
    /// The `pg_autoctl ... --run` process, leader of its own process group (its postgres too).
    keeper: Option<Child>,
}

/// A pg_auto_failover monitor and two PostgreSQL nodes on loopback, a primary and its
/// synchronous standby; every process is killed and every file removed when it is dropped.
pub struct ScratchCluster {
    dir: tempfile::TempDir,
    monitor: Mutex<Instance>,
    nodes: Mutex<Vec<Instance>>,
}

impl ScratchCluster {
    /// Whether this machine has what [`ScratchCluster::start`] runs.
    pub fn available() -> bool {
        Path::new(PG_AUTOCTL).exists() && Path::new(PG_BIN).exists()
    }

    /// Creates the monitor and the two nodes and waits until the second is the first's
    /// synchronous standby.
    pub fn start() -> anyhow::Result<Self> {
        ensure!(
            Self::available(),
            "a replicated PostgreSQL needs Debian's postgresql-15-auto-failover and \
             pg-auto-failover-cli (apt-get install them; .ci/run does)"
        );
        let dir = tempfile::tempdir()?;
        if running_as_root() {
            chown_to_postgres(dir.path())?;
        }
        let mut monitor = Instance::new(dir.path(), "monitor")?;
        monitor.keeper = Some(pg_autoctl(
            dir.path(),
            &monitor.create_args("monitor", &[]),
        )?);
        let cluster = Self {
            monitor: Mutex::new(monitor),
            nodes: Mutex::new(Vec::new()),
            dir,
        };
        cluster.tune_monitor()?;
        for name in ["node_1", "node_2"] {
            let node = cluster.start_node(name)?;
            lock(&cluster.nodes).push(node);
            cluster.wait_for(&format!("{name} to join"), |states| {
                states
                    .iter()
                    .any(|(node, state)| node == name && is_settled(state))
            })?;
        }
        cluster.wait_for("a primary and its standby", |states| {
            count(states, "primary") == 1 && count(states, "secondary") == 1
        })?;
        Ok(cluster)
    }

    /// The URL Roost nodes use: both nodes, whichever takes writes.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = lock(&self.nodes)
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!(
            "postgres://postgres@{}/{DATABASE}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// Kills the primary's PostgreSQL and its keeper with SIGKILL, as a machine that dies.
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let primary = self.node_in("primary")?;
        let mut nodes = lock(&self.nodes);
        let node = nodes
            .iter_mut()
            .find(|node| node.name == primary)
            .context("the primary is not one of the nodes")?;
        node.kill();
        Ok(())
    }

    /// Takes the synchronous standby away while the primary waits for it: the standby is
    /// killed, and so is the primary's keeper, so that nobody tells the primary to stop waiting
    /// (its PostgreSQL keeps running, still asking for the standby's confirmation).
    pub fn stall_synchronous_replication(&self) -> anyhow::Result<()> {
        let (primary, standby) = (self.node_in("primary")?, self.node_in("secondary")?);
        let mut primary_port = None;
        for node in lock(&self.nodes).iter_mut() {
            if node.name == standby {
                node.kill();
            } else if node.name == primary {
                node.kill_keeper_only()?;
                primary_port = Some(node.port);
            }
        }
        let primary_port = primary_port.context("the primary is not one of the nodes")?;
        let waits_for: String = connect(primary_port, "postgres", DATABASE)?
            .query_one("SHOW synchronous_standby_names", &[])?
            .get(0);
        ensure!(!waits_for.is_empty(), "the primary waits for no standby");
        wait_until_streaming(primary_port, false)
    }

    /// Starts the killed standby again and waits until the primary streams to it.
    pub fn restart_standby(&self) -> anyhow::Result<()> {
        let standby = self.restart_killed()?;
        let primary_port = lock(&self.nodes)
            .iter()
            .find(|node| node.name != standby)
            .map(|node| node.port);
        wait_until_streaming(primary_port.context("no primary")?, true)
    }

    /// Starts the killed node again: it must come back as the new primary's standby.
    pub fn restart_killed_as_standby(&self) -> anyhow::Result<()> {
        let killed = self.restart_killed()?;
        self.wait_for("the old primary to rejoin as a standby", |states| {
            let rejoined = states
                .iter()
                .any(|(node, state)| node == killed && state == "secondary");
            rejoined && count(states, "primary") == 1
        })
    }

    /// Runs the killed node's keeper again (`pg_autoctl run` on its data directory): the node
    /// rejoins as whatever the monitor says it is. Returns its name.
    fn restart_killed(&self) -> anyhow::Result<&'static str> {
        let mut nodes = lock(&self.nodes);
        let node = nodes
            .iter_mut()
            .find(|node| node.keeper.is_none())
            .context("no node was killed")?;
        node.keeper = Some(pg_autoctl(
            self.dir.path(),
            &["run", "--pgdata", path(&node.pgdata)?],
        )?);
        Ok(node.name)
    }

    /// The names of the nodes that take writes (the others are in recovery: standbys).
    pub fn writable_nodes(&self) -> anyhow::Result<Vec<&'static str>> {
        let mut writable = Vec::new();
        for node in lock(&self.nodes).iter() {
            let in_recovery: bool = connect(node.port, "postgres", DATABASE)?
                .query_one("SELECT pg_is_in_recovery()", &[])?
                .get(0);
            if !in_recovery {
                writable.push(node.name);
            }
        }
        Ok(writable)
    }

    fn start_node(&self, name: &'static str) -> anyhow::Result<Instance> {
        let mut node = Instance::new(self.dir.path(), name)?;
        let monitor_url = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover",
            lock(&self.monitor).port
        );
        let node_args = [
            "--name",
            name,
            "--dbname",
            DATABASE,
            "--monitor",
            &monitor_url,
        ];
        node.keeper = Some(pg_autoctl(
            self.dir.path(),
            &node.create_args("postgres", &node_args),
        )?);
        Ok(node)
    }

    /// Makes the monitor decide in seconds.
    fn tune_monitor(&self) -> anyhow::Result<()> {
        let port = lock(&self.monitor).port;
        let mut client = wait_until_connects(port, "postgres", "pg_auto_failover")?;
        // Each its own statement: ALTER SYSTEM cannot run in a transaction.
        for setting in [
            "health_check_period = 1000",
            "health_check_timeout = 1000",
            "health_check_max_retries = 1",
            "health_check_retry_delay = 500",
            "node_considered_unhealthy_timeout = 2000",
            // How long the monitor waits for a failed primary to step down before it promotes
            // the standby (30 s by default; a primary SIGKILLed never answers).
            "primary_demote_timeout = 5000",
        ] {
            client.batch_execute(&format!("ALTER SYSTEM SET pgautofailover.{setting}"))?;
        }
        client.batch_execute("SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// (node name, reported state) of each node, as the monitor has them (none while it does
    /// not answer).
    fn states(&self) -> Vec<(String, String)> {
        let port = lock(&self.monitor).port;
        let Ok(mut client) = connect(port, "autoctl_node", "pg_auto_failover") else {
            return Vec::new();
        };
        client
            .query(
                "SELECT nodename, reportedstate::text FROM pgautofailover.node ORDER BY nodeid",
                &[],
            )
            .map(|rows| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
            .unwrap_or_default()
    }

    fn node_in(&self, state: &str) -> anyhow::Result<String> {
        let states = self.states();
        match states.iter().find(|(_, reported)| reported == state) {
            Some((node, _)) => Ok(node.clone()),
            None => bail!("no node is {state}: {states:?}"),
        }
    }

    /// Waits until `done` holds of the monitor's states. While a standby copies the primary, an
    /// immediate checkpoint is asked of every node: the base backup waits for one, and a spread
    /// checkpoint takes minutes.
    fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&[(String, String)]) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let states = self.states();
            if done(&states) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "waited {SETTLE:?} for {what} (logs in {}): {states:?}",
                self.dir.path().display()
            );
            for node in lock(&self.nodes).iter() {
                if let Ok(mut client) = connect(node.port, "postgres", DATABASE) {
                    let _ = client.batch_execute("CHECKPOINT");
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let nodes = self.nodes.get_mut().unwrap_or_else(|e| e.into_inner());
        for node in nodes.iter_mut() {
            node.kill();
        }
        self.monitor
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .kill();
    }
}

impl Instance {
    fn new(dir: &Path, name: &'static str) -> anyhow::Result<Self> {
        Ok(Self {
            name,
            port: free_port()?,
            pgdata: dir.join(name),
            keeper: None,
        })
    }

    /// `pg_autoctl create KIND` for this instance on loopback, trusting local connections, with
    /// `more`, staying in the foreground (`--run`) as its keeper.
    fn create_args(&self, kind: &str, more: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["create", kind, "--pgdata"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(self.pgdata.display().to_string());
        args.extend(
            [
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--run",
            ]
            .into_iter()
            .chain(more.iter().copied())
            .map(str::to_owned),
        );
        args.extend(["--pgport".to_owned(), self.port.to_string()]);
        args
    }

    /// SIGKILL to the keeper's processes, its PostgreSQL left running (it is in the keeper's
    /// process group; its own children are not).
    fn kill_keeper_only(&mut self) -> anyhow::Result<()> {
        let Some(keeper) = &self.keeper else {
            return Ok(());
        };
        let postmaster = self.postmaster_pid();
        let group = keeper.id().to_string();
        let listed = Command::new("ps")
            .args(["-e", "-o", "pid=,pgid="])
            .output()
            .context("listing processes with ps")?;
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let mut fields = line.split_whitespace();
            let (Some(Ok(pid)), Some(pgid)) = (fields.next().map(str::parse::<u32>), fields.next())
            else {
                continue;
            };
            if pgid == group && Some(pid) != postmaster && pid > 1 {
                kill(&pid.to_string());
            }
        }
        Ok(())
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 1).then_some(pid)
    }

    /// SIGKILL to the keeper's whole process group, then to the postmaster (which pg_ctl may
    /// have started in a group of its own).
    fn kill(&mut self) {
        if let Some(mut keeper) = self.keeper.take() {
            kill(&format!("-{}", keeper.id()));
            let _ = keeper.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            kill(&pid.to_string());
        }
    }
}

/// SIGKILL to `target`, a process id or (negative) a process group. Through util-linux's `kill`
/// with `--`: procps' reads a negative number as a signal, and sends SIGKILL to every process.
fn kill(target: &str) {
    let _ = Command::new("/usr/bin/kill")
        .args(["-s", "KILL", "--", target])
        .status();
}

/// Runs `pg_autoctl args` in the background, its configuration and state kept under `dir`.
fn pg_autoctl(dir: &Path, args: &[impl AsRef<str>]) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let pgdata = args.iter().skip_while(|arg| **arg != "--pgdata").nth(1);
    let name = pgdata.map_or("pg_autoctl", |pgdata| {
        pgdata.rsplit('/').next().unwrap_or("pg_autoctl")
    });
    let log_file = dir.join(format!("{name}-{}.log", args.first().unwrap_or(&"run")));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", PG_AUTOCTL]);
        command
    } else {
        Command::new(PG_AUTOCTL)
    };
    command
        .args(&args)
        .env("PATH", format!("{PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting pg_autoctl")
}

/// Waits until the PostgreSQL on `port` streams to a standby (`true`) or to none.
fn wait_until_streaming(port: u16, streaming: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = connect(port, "postgres", DATABASE).is_ok_and(|mut client| {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                    &[],
                )
                .is_ok_and(|row| row.get::<_, i64>(0) > 0)
        });
        if now == streaming {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "streaming never became {streaming}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(port: u16, user: &str, database: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(database)
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
}

fn wait_until_connects(port: u16, user: &str, database: &str) -> anyhow::Result<postgres::Client> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match connect(port, user, database) {
            Ok(client) => return Ok(client),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => bail!("the monitor never answered: {e}"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_settled(state: &str) -> bool {
    matches!(state, "single" | "wait_primary" | "primary" | "secondary")
}

fn count(states: &[(String, String)], state: &str) -> usize {
    states
        .iter()
        .filter(|(_, reported)| reported == state)
        .count()
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A loopback port free now (the instance binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

fn chown_to_postgres(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir)
        .status()
        .context("running chown")?;
    ensure!(status.success(), "chown of the cluster's directory failed");
    Ok(())
}
