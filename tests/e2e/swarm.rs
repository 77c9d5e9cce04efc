//! deploy/swarm/stack.yml on a real single-node Docker Swarm: three healthy
//! replicas, a rolling update to a new version while a client probes every
//! replica, and an automatic rollback of an update that never becomes
//! healthy.
//!
//! The test creates the swarm and leaves it afterwards (also on failure);
//! it refuses to run on a machine that is already in a swarm. The ingress
//! routing mesh does not work on this kernel (no IPVS), so the client is a
//! container of the test's own on the stack's attachable overlay network:
//! a probing thread joins that container's network namespace (`setns`)
//! and speaks HTTP to each task's overlay address. All traffic stays on
//! this machine.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::*;

use crate::fleet::{LoadedImage, docker, docker_json, sydney_bundle_version, unique};

/// How often Docker runs the health check during the test (the stack's
/// default is 5 s; this keeps each rollout to seconds).
const HEALTH_INTERVAL: &str = "500ms";

/// A single-node swarm created by the test; left on drop.
struct Swarm {
    /// Whether `docker_gwbridge` (which Swarm creates and leaving does not
    /// remove) was there before.
    had_gwbridge: bool,
}

impl Swarm {
    fn init() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout();
        assert_eq!(
            state.trim(),
            "inactive",
            "this machine's Docker engine is already part of a swarm ({}); the test creates \
             its own and will not leave someone else's. If it is a leftover of an earlier \
             run, `docker swarm leave --force` removes it",
            state.trim()
        );
        let had_gwbridge =
            run(Command::new("docker").args(["network", "inspect", "docker_gwbridge"]))
                .output
                .status
                .success();
        // Leave even if init fails half-way.
        let swarm = Swarm { had_gwbridge };
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        swarm
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output();
        if !self.had_gwbridge {
            let _ = Command::new("docker")
                .args(["network", "rm", "docker_gwbridge"])
                .output();
        }
    }
}

/// A stack deployed from deploy/swarm/stack.yml; removed on drop (and its
/// containers waited for, so the swarm can be left cleanly).
struct Stack {
    name: String,
    port: u16,
}

impl Stack {
    /// `docker stack deploy` of the real file with `image`.
    fn deploy(&self, image: &str) -> Ran {
        let file = root().join("deploy/swarm/stack.yml");
        let ran = run_timeout(
            Command::new("docker")
                .args(["stack", "deploy", "--resolve-image", "never", "-c"])
                .arg(&file)
                .arg(&self.name)
                .env("SYDNEY_IMAGE", image)
                .env("SYDNEY_HEALTH_INTERVAL", HEALTH_INTERVAL)
                .env("SYDNEY_PORT", self.port.to_string()),
            Duration::from_secs(120),
        );
        ran.expect_success();
        ran
    }

    fn service(&self) -> String {
        format!("{}_sydney", self.name)
    }

    fn network(&self) -> String {
        format!("{}_sydney", self.name)
    }

    /// The service's running containers.
    fn tasks(&self) -> Vec<Task> {
        let label = format!("label=com.docker.swarm.service.name={}", self.service());
        let ids = docker(&["ps", "-q", "--filter", &label]).stdout();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect"];
        args.extend(&ids);
        // A container can vanish between ps and inspect: take what is left.
        let ran = run(Command::new("docker").args(&args));
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str(ran.stdout().trim()) else {
            return Vec::new();
        };
        items
            .iter()
            .map(|item| Task {
                id: item["Id"].as_str().unwrap_or_default().to_owned(),
                image: item["Config"]["Image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                state: item["State"]["Status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                health: item["State"]["Health"]["Status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ip: item["NetworkSettings"]["Networks"][self.network()]["IPAddress"]
                    .as_str()
                    .and_then(|ip| ip.parse().ok()),
            })
            .collect()
    }

    /// `UpdateStatus.State`: updating, completed, rollback_started,
    /// rollback_completed, ... (empty before the first update).
    fn update_state(&self) -> String {
        let status = docker_json(&[
            "service",
            "inspect",
            "--format",
            "{{json .UpdateStatus}}",
            &self.service(),
        ]);
        status["State"].as_str().unwrap_or_default().to_owned()
    }

    /// `docker service ps` for failure messages.
    fn describe(&self) -> String {
        let ran = run(Command::new("docker").args([
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Name}} {{.Image}} {{.DesiredState}} {{.CurrentState}} {{.Error}}",
            &self.service(),
        ]));
        ran.stdout()
    }

    /// Waits until exactly `replicas` containers run `image`, all healthy.
    fn wait_all_healthy_on(&self, image: &str, replicas: usize, timeout: Duration) -> Vec<Task> {
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = self.tasks();
            let healthy = tasks
                .iter()
                .filter(|t| t.image.starts_with(image) && t.health == "healthy")
                .count();
            if healthy == replicas && tasks.len() == replicas {
                return tasks;
            }
            assert!(
                Instant::now() < deadline,
                "not {replicas} healthy tasks on {image} within {timeout:?}: {tasks:?}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for the update state to become `wanted`.
    fn wait_update_state(&self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.update_state();
            if state == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "update state {state:?}, not {wanted:?}, after {timeout:?}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["stack", "rm", &self.name])
            .output();
        let label = format!("label=com.docker.stack.namespace={}", self.name);
        for _ in 0..120 {
            let left = Command::new("docker")
                .args(["ps", "-aq", "--filter", &label])
                .output();
            if left.is_ok_and(|out| out.stdout.trim_ascii().is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One running container of the service.
#[derive(Debug, Clone)]
#[allow(dead_code)] // Fields are read through Debug in failure messages.
struct Task {
    id: String,
    image: String,
    state: String,
    health: String,
    ip: Option<IpAddr>,
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A complete `200 Ok`.
    Ok200,
    /// The connection was refused: a task that stopped listening.
    Refused,
    /// No route or no answer to the SYN: a task that is gone.
    Unreachable,
    /// Connected, then closed (or reset) before a single byte of response:
    /// a stopping task closed a connection whose request had not reached
    /// it yet. Nothing was processed, so a client may retry (RFC 9110
    /// 9.2.2); allowed only from a task that then goes away.
    ClosedBeforeResponse,
    /// Anything else: a reset or end of stream mid-response, another
    /// status, garbage. Must never happen.
    Bad,
}

/// What the probes saw in one phase.
struct Seen {
    counts: BTreeMap<Outcome, u64>,
    bad: Vec<String>,
    closed: Vec<(IpAddr, String)>,
}

/// Probes every replica in a loop from inside the client container's
/// network namespace.
struct Prober {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<Outcome, u64>>>,
    bad: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<Vec<(IpAddr, String)>>>,
    probing: Option<std::thread::JoinHandle<()>>,
    refreshing: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing the tasks of `stack` that are healthy, and keeps
    /// probing each until it disappears.
    fn start(stack: &Stack, client_pid: u32) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Arc<Mutex<BTreeSet<IpAddr>>> = Arc::default();
        let counts: Arc<Mutex<BTreeMap<Outcome, u64>>> = Arc::default();
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let closed: Arc<Mutex<Vec<(IpAddr, String)>>> = Arc::default();

        let refreshing = {
            let (stop, targets) = (stop.clone(), targets.clone());
            let stack = Stack {
                name: stack.name.clone(),
                port: stack.port,
            };
            std::thread::spawn(move || {
                let stack = std::mem::ManuallyDrop::new(stack);
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let tasks = stack.tasks();
                    let present: BTreeSet<IpAddr> = tasks.iter().filter_map(|t| t.ip).collect();
                    let mut targets = targets.lock().unwrap();
                    // Keep probing a task while it exists (that is how we
                    // see it stop); start once it is healthy (before that,
                    // a real client would not be sent to it).
                    targets.retain(|ip| present.contains(ip));
                    targets.extend(
                        tasks
                            .iter()
                            .filter(|t| t.health == "healthy")
                            .filter_map(|t| t.ip),
                    );
                    drop(targets);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };

        let netns = std::fs::File::open(format!("/proc/{client_pid}/ns/net"))
            .unwrap_or_else(|err| panic!("cannot open the client's network namespace: {err}"));
        let probing = {
            let (stop, counts, bad, closed) =
                (stop.clone(), counts.clone(), bad.clone(), closed.clone());
            std::thread::spawn(move || {
                // SAFETY: setns with a valid namespace descriptor changes
                // only this thread's network namespace (allowed in a
                // multi-threaded process for network namespaces); the
                // thread then only opens sockets and touches no state tied
                // to the old namespace.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let round: Vec<IpAddr> = targets.lock().unwrap().iter().copied().collect();
                    for ip in round {
                        let (outcome, detail) = probe(SocketAddr::new(ip, 8080));
                        *counts.lock().unwrap().entry(outcome).or_default() += 1;
                        match outcome {
                            Outcome::Bad => bad.lock().unwrap().push(format!("{ip}: {detail}")),
                            Outcome::ClosedBeforeResponse => {
                                closed.lock().unwrap().push((ip, detail));
                            }
                            _ => {}
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Prober {
            stop,
            counts,
            bad,
            closed,
            probing: Some(probing),
            refreshing: Some(refreshing),
        }
    }

    /// Counts so far, bad answers, and connections closed before a
    /// response (address, detail); resets them.
    fn take(&self) -> Seen {
        Seen {
            counts: std::mem::take(&mut *self.counts.lock().unwrap()),
            bad: std::mem::take(&mut *self.bad.lock().unwrap()),
            closed: std::mem::take(&mut *self.closed.lock().unwrap()),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in [self.probing.take(), self.refreshing.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
    }
}

/// One `GET /` on a fresh connection, classified.
fn probe(addr: SocketAddr) -> (Outcome, String) {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(stream) => stream,
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
            return (Outcome::Refused, err.to_string());
        }
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::TimedOut | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
            ) =>
        {
            return (Outcome::Unreachable, err.to_string());
        }
        Err(err) => return (Outcome::Bad, format!("connect: {err}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(err) = stream.write_all(request.as_bytes()) {
        return (Outcome::Bad, format!("send: {err}"));
    }
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        // Not one byte of response: nothing was processed (see the variant).
        Ok(_) if response.is_empty() => {
            return (
                Outcome::ClosedBeforeResponse,
                "closed with no answer".into(),
            );
        }
        Err(err) if response.is_empty() && err.kind() == ErrorKind::ConnectionReset => {
            return (
                Outcome::ClosedBeforeResponse,
                format!("reset before any answer: {err}"),
            );
        }
        Err(err) => {
            return (
                Outcome::Bad,
                format!("reset mid-response after {} bytes: {err}", response.len()),
            );
        }
        Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&response);
    if text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\nOk") {
        (Outcome::Ok200, String::new())
    } else {
        (Outcome::Bad, format!("answer {text:?}"))
    }
}

fn report(phase: &str, counts: &BTreeMap<Outcome, u64>, took: Duration) {
    eprintln!(
        "swarm: {phase} took {:.1} s; probes: {} x 200, {} refused, {} unreachable, \
         {} closed before a response, {} bad",
        took.as_secs_f64(),
        counts.get(&Outcome::Ok200).unwrap_or(&0),
        counts.get(&Outcome::Refused).unwrap_or(&0),
        counts.get(&Outcome::Unreachable).unwrap_or(&0),
        counts.get(&Outcome::ClosedBeforeResponse).unwrap_or(&0),
        counts.get(&Outcome::Bad).unwrap_or(&0),
    );
}

/// A container removed on drop.
struct Client(String);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
fn swarm_stack_is_healthy_updates_without_errors_and_rolls_back_a_bad_update() {
    let started = Instant::now();
    let sandbox = Sandbox::new();
    let base = unique("swarm");
    let image = |bundle: &Path, version: &str| {
        LoadedImage::write_and_load(bundle, &format!("{base}:{version}"), sandbox.path(), |_| {})
    };
    let v1 = image(&artifacts().bundle, "0.1.0");
    let v2 = image(
        &sydney_bundle_version(sandbox.path(), "0.2.0", &[]),
        "0.2.0",
    );
    // Serves on 9999, so the health check (GET / on 8080) never passes.
    let broken = image(
        &sydney_bundle_version(sandbox.path(), "0.3.0", &["--port", "9999"]),
        "0.3.0",
    );

    let swarm = Swarm::init();
    let stack = Stack {
        name: base.clone(),
        port: free_port(),
    };

    // 1. Three replicas, all healthy through the bundle's healthcheck.
    let phase = Instant::now();
    stack.deploy(&v1.tag);
    let first = stack.wait_all_healthy_on(&v1.tag, 3, Duration::from_secs(90));
    eprintln!(
        "swarm: deploy to 3 healthy replicas took {:.1} s",
        phase.elapsed().as_secs_f64()
    );

    // The client: a container of ours on the stack's overlay network.
    let client = Client(unique("client"));
    docker(&[
        "run",
        "-d",
        "--name",
        &client.0,
        "--network",
        &stack.network(),
        &v1.tag,
    ]);
    let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &client.0])
        .stdout()
        .trim()
        .parse()
        .unwrap();
    let prober = Prober::start(&stack, pid);
    eventually(
        Duration::from_secs(30),
        "probes answered by every replica",
        || {
            prober
                .counts
                .lock()
                .unwrap()
                .get(&Outcome::Ok200)
                .is_some_and(|n| *n >= 30)
        },
    );
    let Seen {
        counts,
        bad,
        closed,
    } = prober.take();
    assert!(
        bad.is_empty() && closed.is_empty(),
        "bad answers before any update: {bad:?} {closed:?}"
    );
    report("steady state", &counts, phase.elapsed());

    // 2. A rolling update to 0.2.0, start-first, while probing.
    let phase = Instant::now();
    stack.deploy(&v2.tag);
    stack.wait_update_state("completed", Duration::from_secs(180));
    let second = stack.wait_all_healthy_on(&v2.tag, 3, Duration::from_secs(30));
    let took = phase.elapsed();
    let Seen {
        counts,
        bad,
        closed,
    } = prober.take();
    report("rolling update 0.1.0 -> 0.2.0", &counts, took);
    assert!(
        bad.is_empty(),
        "during the rolling update a client saw resets or errors: {bad:?}"
    );
    // A connection closed before any response must come from a task that
    // was stopping: its address is not one of the tasks left running.
    let running: BTreeSet<IpAddr> = second.iter().filter_map(|t| t.ip).collect();
    let from_running: Vec<_> = closed
        .iter()
        .filter(|(ip, _)| running.contains(ip))
        .collect();
    assert!(
        from_running.is_empty(),
        "a running task closed connections without answering: {from_running:?}"
    );
    if !closed.is_empty() {
        eprintln!("swarm: closed before a response, all by stopping tasks: {closed:?}");
    }
    assert!(counts.get(&Outcome::Ok200).is_some_and(|n| *n > 0));
    let old: BTreeSet<&str> = first.iter().map(|t| t.id.as_str()).collect();
    assert!(
        second.iter().all(|t| !old.contains(t.id.as_str())),
        "every task should have been replaced"
    );

    // 3. An update that never becomes healthy is rolled back; 0.2.0 serves
    //    throughout (start-first never stopped an old task).
    let phase = Instant::now();
    stack.deploy(&broken.tag);
    stack.wait_update_state("rollback_completed", Duration::from_secs(180));
    let after = stack.wait_all_healthy_on(&v2.tag, 3, Duration::from_secs(60));
    let took = phase.elapsed();
    let Seen {
        counts,
        bad,
        closed,
    } = prober.take();
    report("bad update 0.2.0 -> 0.3.0 and rollback", &counts, took);
    assert!(
        bad.is_empty() && closed.is_empty(),
        "during the rollback: {bad:?} {closed:?}"
    );
    assert_eq!(
        counts.get(&Outcome::Refused).copied().unwrap_or(0)
            + counts.get(&Outcome::Unreachable).copied().unwrap_or(0),
        0,
        "no 0.2.0 task should have stopped: {counts:?}"
    );
    assert!(counts.get(&Outcome::Ok200).is_some_and(|n| *n > 0));
    let kept: BTreeSet<&str> = second.iter().map(|t| t.id.as_str()).collect();
    let now: BTreeSet<&str> = after.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(kept, now, "the 0.2.0 tasks should be the same containers");

    drop(prober);
    drop(client);
    drop(stack);
    drop(swarm);
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).stdout();
    assert_eq!(state.trim(), "inactive", "the swarm was not left");
    eprintln!(
        "swarm: whole test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
