//! A replicated PostgreSQL on this machine, as an operator builds it from Debian's packages: a
//! pg_auto_failover monitor and two nodes (a primary and its synchronous standby), each its own
//! PostgreSQL instance on a loopback port, in a temporary directory that goes with the cluster.
//!
//! The monitor is tuned to decide in a few seconds (checks every second, a node unhealthy after
//! two, a failed primary given five to step down): the defaults take about 40 seconds, which is
//! right for a network but not for a test.
//! PostgreSQL refuses to run as root: when the test runs as root, every process runs as the
//! `postgres` user (which Debian's server package creates).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs PostgreSQL 15's programs (pg_autoctl looks for `pg_ctl` on the PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long the cluster may take to form, or to fail over.
const SETTLE: Duration = Duration::from_secs(180);

/// One PostgreSQL instance under pg_autoctl.
struct Instance {
    name: &'static str,
    port: u16,
    pgdata: PathBuf,
    /// The `pg_autoctl ... --run` process, leader of its own process group (its postgres too).
    keeper: Option<Child>,
}

pub struct PgCluster {
    dir: tempfile::TempDir,
    monitor: std::sync::Mutex<Instance>,
    nodes: std::sync::Mutex<Vec<Instance>>,
}

impl PgCluster {
    /// Creates the monitor and the two nodes and waits until the second is the first's
    /// synchronous standby. Panics, saying what is missing, without the packages.
    pub fn start() -> Self {
        assert!(
            Path::new("/usr/bin/pg_autoctl").exists() && Path::new(PG_BIN).exists(),
            "the failover test needs Debian's postgresql-15-auto-failover and \
             pg-auto-failover-cli (apt-get install them; .ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            chown_to_postgres(dir.path());
        }
        let mut monitor = Instance::new(dir.path(), "monitor");
        monitor.keeper = Some(pg_autoctl(dir.path(), &monitor.create_args("monitor", &[])));
        let cluster = Self {
            monitor: std::sync::Mutex::new(monitor),
            nodes: std::sync::Mutex::new(Vec::new()),
            dir,
        };
        cluster.tune_monitor();
        for name in ["node_1", "node_2"] {
            let node = cluster.start_node(name);
            cluster.nodes.lock().unwrap().push(node);
            cluster.wait_for(&format!("{name} to join"), |states| {
                states
                    .iter()
                    .any(|(node, state)| node == name && is_settled(state))
            });
        }
        cluster.wait_for("a primary and its standby", |states| {
            count(states, "primary") == 1 && count(states, "secondary") == 1
        });
        cluster
    }

    /// The URL Roost nodes use: both nodes, whichever takes writes.
    pub fn url(&self) -> String {
        let nodes = self.nodes.lock().unwrap();
        let hosts: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        format!(
            "postgres://postgres@{}/roost?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// Kills the primary's PostgreSQL and its keeper with SIGKILL, as a machine that dies.
    pub fn kill_primary(&self) {
        let primary = self.node_in("primary");
        let mut nodes = self.nodes.lock().unwrap();
        let node = nodes.iter_mut().find(|node| node.name == primary).unwrap();
        node.kill();
    }

    /// Takes the synchronous standby away while the primary waits for it: the standby is
    /// killed, and so is the primary's keeper, so that nobody tells the primary to stop waiting
    /// (its PostgreSQL keeps running, still asking for the standby's confirmation).
    pub fn stall_synchronous_replication(&self) {
        let (primary, standby) = (self.node_in("primary"), self.node_in("secondary"));
        let mut nodes = self.nodes.lock().unwrap();
        let mut primary_port = 0;
        for node in nodes.iter_mut() {
            if node.name == standby {
                node.kill();
            } else if node.name == primary {
                node.kill_keeper_only();
                primary_port = node.port;
            }
        }
        drop(nodes);
        let mut client = connect(primary_port, "postgres", "roost").unwrap();
        let waits_for: String = client
            .query_one("SHOW synchronous_standby_names", &[])
            .unwrap()
            .get(0);
        assert!(!waits_for.is_empty(), "the primary waits for no standby");
        self.wait_until_streaming(primary_port, false);
    }

    /// Waits until the PostgreSQL on `port` streams to a standby (`true`) or to none.
    fn wait_until_streaming(&self, port: u16, streaming: bool) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let now = connect(port, "postgres", "roost").is_ok_and(|mut client| {
                client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                        &[],
                    )
                    .is_ok_and(|row| row.get::<_, i64>(0) > 0)
            });
            if now == streaming {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "streaming never became {streaming}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the killed standby again and waits until the primary streams to it.
    pub fn restart_standby(&self) {
        let mut nodes = self.nodes.lock().unwrap();
        let standby = nodes.iter_mut().find(|node| node.keeper.is_none()).unwrap();
        standby.keeper = Some(pg_autoctl(
            self.dir.path(),
            &["run", "--pgdata", path(&standby.pgdata)],
        ));
        let primary_port = nodes
            .iter()
            .find(|node| node.keeper.is_some())
            .unwrap()
            .port;
        drop(nodes);
        self.wait_until_streaming(primary_port, true);
    }

    /// Starts the killed node again: it must come back as the new primary's standby.
    pub fn restart_killed_as_standby(&self) {
        let killed = {
            let nodes = self.nodes.lock().unwrap();
            nodes
                .iter()
                .find(|node| node.keeper.is_none())
                .expect("a node was killed")
                .name
        };
        {
            let mut nodes = self.nodes.lock().unwrap();
            let node = nodes.iter_mut().find(|node| node.name == killed).unwrap();
            node.keeper = Some(pg_autoctl(
                self.dir.path(),
                &["run", "--pgdata", path(&node.pgdata)],
            ));
        }
        self.wait_for("the old primary to rejoin as a standby", |states| {
            let rejoined = states
                .iter()
                .any(|(node, state)| node == killed && state == "secondary");
            rejoined && count(states, "primary") == 1
        });
    }

    /// Asserts that exactly one node takes writes (the others are in recovery: standbys).
    pub fn expect_one_primary(&self) {
        let nodes = self.nodes.lock().unwrap();
        let writable: Vec<&str> = nodes
            .iter()
            .filter(|node| {
                let mut client = connect(node.port, "postgres", "roost").unwrap();
                let row = client.query_one("SELECT pg_is_in_recovery()", &[]).unwrap();
                !row.get::<_, bool>(0)
            })
            .map(|node| node.name)
            .collect();
        assert_eq!(writable.len(), 1, "nodes taking writes: {writable:?}");
    }

    fn start_node(&self, name: &'static str) -> Instance {
        let mut node = Instance::new(self.dir.path(), name);
        let monitor_url = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover",
            self.monitor.lock().unwrap().port
        );
        let node_args = [
            "--name",
            name,
            "--dbname",
            "roost",
            "--monitor",
            &monitor_url,
        ];
        node.keeper = Some(pg_autoctl(
            self.dir.path(),
            &node.create_args("postgres", &node_args),
        ));
        node
    }

    /// Makes the monitor decide in seconds.
    fn tune_monitor(&self) {
        let port = self.monitor.lock().unwrap().port;
        let mut client = wait_until_connects(port, "postgres", "pg_auto_failover");
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
            client
                .batch_execute(&format!("ALTER SYSTEM SET pgautofailover.{setting}"))
                .unwrap();
        }
        client.batch_execute("SELECT pg_reload_conf()").unwrap();
    }

    /// (node name, reported state) of each node, as the monitor has them.
    fn states(&self) -> Vec<(String, String)> {
        let port = self.monitor.lock().unwrap().port;
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

    fn node_in(&self, state: &str) -> String {
        self.states()
            .into_iter()
            .find(|(_, reported)| reported == state)
            .map(|(node, _)| node)
            .unwrap_or_else(|| panic!("no node is {state}"))
    }

    /// Waits until `done` holds of the monitor's states. While a standby copies the primary, an
    /// immediate checkpoint is asked of every node: the base backup waits for one, and a spread
    /// checkpoint takes minutes.
    fn wait_for(&self, what: &str, done: impl Fn(&[(String, String)]) -> bool) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let states = self.states();
            if done(&states) {
                return;
            }
            assert!(Instant::now() < deadline, "waited for {what}: {states:?}");
            for node in self.nodes.lock().unwrap().iter() {
                if let Ok(mut client) = connect(node.port, "postgres", "roost") {
                    let _ = client.batch_execute("CHECKPOINT");
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().unwrap().iter_mut() {
            node.kill();
        }
        self.monitor.get_mut().unwrap().kill();
    }
}

impl Instance {
    fn new(dir: &Path, name: &'static str) -> Self {
        Self {
            name,
            port: free_port(),
            pgdata: dir.join(name),
            keeper: None,
        }
    }

    /// `pg_autoctl create KIND` for this instance on loopback, trusting local connections, with
    /// `more`, staying in the foreground (`--run`) as its keeper.
    fn create_args<'a>(&'a self, kind: &'a str, more: &[&'a str]) -> Vec<String> {
        let mut args = vec!["create", kind, "--pgdata", path(&self.pgdata)];
        args.extend([
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
            "--run",
        ]);
        args.extend_from_slice(more);
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        args.extend(["--pgport".to_owned(), self.port.to_string()]);
        args
    }

    /// SIGKILL to the keeper's processes, its PostgreSQL left running (it is in the keeper's
    /// process group; its own children are not).
    fn kill_keeper_only(&mut self) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        let postmaster = self.postmaster_pid();
        let group = keeper.id().to_string();
        let listed = Command::new("ps")
            .args(["-e", "-o", "pid=,pgid="])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            let mut fields = line.split_whitespace();
            let (Some(pid), Some(pgid)) = (fields.next(), fields.next()) else {
                continue;
            };
            let pid: u32 = pid.parse().unwrap();
            if pgid == group && Some(pid) != postmaster && pid > 1 {
                let _ = Command::new("/usr/bin/kill")
                    .args(["-s", "KILL", "--", &pid.to_string()])
                    .status();
            }
        }
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
            let group = format!("-{}", keeper.id());
            let _ = Command::new("/usr/bin/kill")
                .args(["-s", "KILL", "--", &group])
                .status();
            let _ = keeper.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("/usr/bin/kill")
                .args(["-s", "KILL", "--", &pid.to_string()])
                .status();
        }
    }
}

/// Runs `pg_autoctl args` in the background, its configuration and state kept under `dir`.
fn pg_autoctl(dir: &Path, args: &[impl AsRef<str>]) -> Child {
    use std::os::unix::process::CommandExt;
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let pgdata = args.iter().skip_while(|arg| **arg != "--pgdata").nth(1);
    let name = pgdata.map_or("pg_autoctl", |pgdata| {
        pgdata.rsplit('/').next().unwrap_or("pg_autoctl")
    });
    let log_file = dir.join(format!("{name}-{}.log", args[0]));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .unwrap();
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "pg_autoctl"]);
        command
    } else {
        Command::new("pg_autoctl")
    };
    command
        .args(&args)
        .env("PATH", format!("{PG_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("starting pg_autoctl")
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

fn wait_until_connects(port: u16, user: &str, database: &str) -> postgres::Client {
    let deadline = Instant::now() + SETTLE;
    loop {
        match connect(port, user, database) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("the monitor never answered: {e}"),
        }
    }
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

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A loopback port free now (the instance binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

fn chown_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres", path(dir)])
        .status()
        .unwrap();
    assert!(status.success(), "chown of the cluster's directory failed");
}
