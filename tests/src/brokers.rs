//! Brokers a test owns, so it can break them: a Mosquitto with persistence and a tansu
//! on sqlite storage (both keep their data across a restart), on fixed loopback ports
//! chosen at start. The shared brokers of the other tests are never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Rig;

/// How a broker process is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the broker saves what it holds and exits.
    Graceful,
    /// SIGKILL: whatever it had not saved is gone.
    Kill,
}

/// One broker process that can be stopped, restarted, frozen and thawed.
struct Broker {
    name: &'static str,
    command: Vec<String>,
    port: u16,
    /// Where it runs (tansu's sqlite path is relative to it).
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not open port {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self, how: Stop) {
        if let Some(mut child) = self.child.take() {
            let signal = match how {
                Stop::Graceful => "-TERM",
                Stop::Kill => "-KILL",
            };
            signal_pid(child.id(), signal);
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            signal_pid(child.id(), signal);
        }
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.stop(Stop::Kill);
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto and a tansu of the test's own, their data under `dir`.
pub struct OwnBrokers {
    mosquitto: Broker,
    tansu: Broker,
    pub rig: Rig,
}

impl OwnBrokers {
    /// Start both, with the binaries `scripts/test` names (`FLEETWATCH_TEST_MOSQUITTO`,
    /// `FLEETWATCH_TEST_TANSU`), and `fleetwatch` from `FLEETWATCH_BIN`.
    pub fn start(dir: PathBuf) -> Self {
        // A path relative to the broker's directory: tansu 0.6.0 reads `sqlite:///abs`
        // as relative to its working directory anyway.
        Self::start_with_storage(dir, "sqlite://tansu.db")
    }

    /// Like [`OwnBrokers::start`] with tansu on `storage` (`memory://tansu/`: nothing
    /// survives a restart, but no disk in the way of a load test).
    pub fn start_with_storage(dir: PathBuf, storage: &str) -> Self {
        let binary = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} is not set: run through scripts/test"))
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mosquitto")).unwrap();
        let (mqtt_port, kafka_port) = (free_port(), free_port());
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, mosquitto_config(mqtt_port, &dir)).unwrap();
        let mut mosquitto = Broker {
            name: "mosquitto",
            command: vec![
                binary("FLEETWATCH_TEST_MOSQUITTO"),
                "-c".into(),
                path(&config),
            ],
            port: mqtt_port,
            dir: dir.clone(),
            log: dir.join("mosquitto.log"),
            child: None,
        };
        let listener = format!("tcp://127.0.0.1:{kafka_port}");
        let mut tansu = Broker {
            name: "tansu",
            command: vec![
                binary("FLEETWATCH_TEST_TANSU"),
                "broker".into(),
                "--listener-url".into(),
                listener.clone(),
                "--advertised-listener-url".into(),
                listener,
                "--storage-engine".into(),
                storage.into(),
            ],
            port: kafka_port,
            dir: dir.clone(),
            log: dir.join("tansu.log"),
            child: None,
        };
        mosquitto.start();
        tansu.start();
        std::thread::sleep(Duration::from_secs(2));
        let rig = Rig {
            kafka: format!("127.0.0.1:{kafka_port}"),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port,
            fleetwatch_bin: binary("FLEETWATCH_BIN"),
        };
        Self {
            mosquitto,
            tansu,
            rig,
        }
    }

    /// The process ids of Mosquitto and tansu (for CPU figures).
    pub fn pids(&self) -> [(&'static str, u32); 2] {
        let pid = |broker: &Broker| broker.child.as_ref().map_or(0, Child::id);
        [
            ("mosquitto", pid(&self.mosquitto)),
            ("tansu", pid(&self.tansu)),
        ]
    }

    /// Stop Mosquitto, wait `down`, start it again on the same port and data.
    pub fn restart_mosquitto(&mut self, how: Stop, down: Duration) {
        self.mosquitto.stop(how);
        std::thread::sleep(down);
        self.mosquitto.start();
    }

    /// Stop tansu, wait `down`, start it again on the same port and data.
    pub fn restart_tansu(&mut self, how: Stop, down: Duration) {
        self.tansu.stop(how);
        std::thread::sleep(down);
        self.tansu.start();
    }

    /// Freeze tansu (SIGSTOP) for `frozen`, then let it go on (SIGCONT): connections
    /// stay open and nothing answers.
    pub fn freeze_tansu(&self, frozen: Duration) {
        self.tansu.signal("-STOP");
        std::thread::sleep(frozen);
        self.tansu.signal("-CONT");
    }

    /// Freeze tansu (SIGSTOP) until [`OwnBrokers::thaw_tansu`].
    pub fn stop_tansu_answering(&self) {
        self.tansu.signal("-STOP");
    }
}

fn path(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// Persistence on and saved every second, so a graceful stop keeps every queued
/// message and a SIGKILL loses at most the last second's.
fn mosquitto_config(port: u16, dir: &std::path::Path) -> String {
    // Mosquitto started as root drops to a `mosquitto` user unless told to stay.
    let user = Command::new("id")
        .arg("-un")
        .output()
        .map_or("root".into(), |out| {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        });
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
         persistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n\
         max_inflight_messages 1000\nmax_packet_size 4194304\nuser {user}\n",
        path(&dir.join("mosquitto"))
    )
}
